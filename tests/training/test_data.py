"""training.data on real NIfTI folders: readers, label mapping, masks, partial labels, cache, sampling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from model.bundle.config import tiny_config
from model.targets.vocabulary import DatasetLabelMap, default_vocabulary
from tests.training.conftest import msd_cases, write_msd_subset, write_nnunet_v2, write_plain
from training.data import (
    CaseFiles,
    DatasetFormatError,
    PatchSampler,
    PreparedCase,
    case_id,
    laterality_problems,
    prepare_case,
    prepare_sources,
    read_dataset,
    restrict_targets,
    select_cases,
    target_masks,
)
from training.synthetic.phantoms import PHANTOM_LABELS

VOCABULARY = default_vocabulary()
PHANTOM = dict((name, value) for value, name in PHANTOM_LABELS)
PREPROCESS = tiny_config().preprocess


def ids(*names: str) -> tuple[int, ...]:
    return tuple(sorted(VOCABULARY.get(n).id for n in names))


def load_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj).astype(np.int32), np.asarray(image.affine)


# ---------------------------------------------------------------- readers


def test_msd_reader_uses_the_phantom_mapping_table(msd_phantoms: Path) -> None:
    source = read_dataset(msd_phantoms, VOCABULARY)
    assert source.label_map == VOCABULARY.dataset("latentseg_phantoms")
    assert [(c.image, c.label) for c in source.cases] == msd_cases(msd_phantoms)
    assert source.label_map.annotated == {name for _, name in PHANTOM_LABELS}


def test_nnunet_v2_reader_resolves_label_names_and_synonyms(tmp_path: Path, msd_phantoms: Path) -> None:
    root = write_nnunet_v2(
        msd_phantoms, tmp_path / "Dataset042_Abdomen",
        labels={"background": 0, "liver": 1, "Spleen": 2, "left kidney": 3},
        mapping={PHANTOM["liver"]: 1, PHANTOM["spleen"]: 2, PHANTOM["kidney_left"]: 3},
    )
    source = read_dataset(root, VOCABULARY)
    assert source.label_map.labels == ((1, "liver"), (2, "spleen"), (3, "kidney_left"))
    assert source.name == "dataset042_abdomen"  # a valid (snake_case) name from the folder
    assert [c.image.name for c in source.cases] == ["case_000_0000.nii.gz", "case_001_0000.nii.gz", "case_002_0000.nii.gz"]
    assert [c.label.name for c in source.cases] == ["case_000.nii.gz", "case_001.nii.gz", "case_002.nii.gz"]
    case = prepare_case(source.cases[0], source.label_map, VOCABULARY, PREPROCESS)
    assert case.annotated == ids("liver", "spleen", "kidney_left")
    assert set(case.present()) == set(ids("liver", "spleen", "kidney_left"))


def test_plain_folder_with_labelmap_yaml(tmp_path: Path, msd_phantoms: Path) -> None:
    root = write_plain(
        msd_phantoms, tmp_path / "plain",
        labelmap={"name": "my_clinic", "labels": {1: "Liver", 2: "gall-bladder", 3: "Liver tumour"}},
        mapping={PHANTOM["liver"]: 1, PHANTOM["gallbladder"]: 2, PHANTOM["liver_tumor"]: 3},
    )
    source = read_dataset(root, VOCABULARY)
    assert source.name == "my_clinic"
    assert source.label_map.labels == ((1, "liver"), (2, "gallbladder"), (3, "liver_tumor"))
    assert len(source.cases) == 3
    assert all(c.label == root / "labels" / c.image.name for c in source.cases)


def test_known_dataset_name_uses_the_mapping_table(tmp_path: Path, msd_phantoms: Path) -> None:
    # Label names that would not resolve on their own ("cancer"): the table decides.
    root = write_msd_subset(
        msd_phantoms, tmp_path / "liver", name="Task03_Liver",
        labels={"0": "background", "1": "liver", "2": "cancer"},
        mapping={PHANTOM["liver"]: 1, PHANTOM["liver_tumor"]: 2}, cases=1,
    )
    assert read_dataset(root, VOCABULARY).label_map == VOCABULARY.dataset("msd_task03_liver")
    spleen = write_msd_subset(
        msd_phantoms, tmp_path / "spleen", name="msd_task09_spleen",
        labels={"0": "background", "1": "spleen"}, mapping={PHANTOM["spleen"]: 1}, cases=1,
    )
    assert read_dataset(spleen, VOCABULARY).label_map == VOCABULARY.dataset("Task09_Spleen")


def test_real_msd_dataset_json_is_identified_by_its_folder_name(tmp_path: Path, msd_phantoms: Path) -> None:
    # The Decathlon's own dataset.json says "name": "Liver" and labels "cancer"; the folder is Task03_Liver.
    root = write_msd_subset(
        msd_phantoms, tmp_path / "Task03_Liver", name="Liver",
        labels={"0": "background", "1": "liver", "2": "cancer"},
        mapping={PHANTOM["liver"]: 1, PHANTOM["liver_tumor"]: 2}, cases=1,
    )
    assert read_dataset(root, VOCABULARY).label_map == VOCABULARY.dataset("msd_task03_liver")
    # ... and "name": "Spleen" with resolvable labels is a valid dataset, not a crash on the capital S.
    spleen = write_msd_subset(
        msd_phantoms, tmp_path / "some_spleens", name="Spleen",
        labels={"0": "background", "1": "spleen"}, mapping={PHANTOM["spleen"]: 1}, cases=1,
    )
    label_map = read_dataset(spleen, VOCABULARY).label_map
    assert label_map.labels == ((1, "spleen"),) and label_map.name == "spleen"


def test_unknown_label_name_is_a_clear_error_naming_it(tmp_path: Path, msd_phantoms: Path) -> None:
    root = write_msd_subset(
        msd_phantoms, tmp_path / "odd", name="odd_clinic",
        labels={"0": "background", "1": "liver", "2": "flux capacitor"},
        mapping={PHANTOM["liver"]: 1, PHANTOM["spleen"]: 2}, cases=1,
    )
    with pytest.raises(DatasetFormatError, match="flux capacitor") as info:
        read_dataset(root, VOCABULARY)
    assert "liver'" not in str(info.value).split("valid:")[0]  # only the bad label is blamed


def test_missing_files_are_clear_errors(tmp_path: Path, msd_phantoms: Path) -> None:
    msd = tmp_path / "msd"
    shutil.copytree(msd_phantoms, msd)
    missing = sorted((msd / "imagesTr").iterdir())[1]
    missing.unlink()
    with pytest.raises(DatasetFormatError, match=missing.name):
        read_dataset(msd, VOCABULARY)

    nnunet = write_nnunet_v2(msd_phantoms, tmp_path / "nnunet", {"background": 0, "liver": 1}, {PHANTOM["liver"]: 1})
    (nnunet / "imagesTr" / "case_002_0000.nii.gz").unlink()
    with pytest.raises(DatasetFormatError, match="case_002_0000.nii.gz"):
        read_dataset(nnunet, VOCABULARY)

    plain = write_plain(msd_phantoms, tmp_path / "plain", {"labels": {1: "liver"}}, {PHANTOM["liver"]: 1})
    orphan = sorted((plain / "labels").iterdir())[0]
    orphan.unlink()
    with pytest.raises(DatasetFormatError, match=orphan.name):
        read_dataset(plain, VOCABULARY)
    (plain / "labelmap.yaml").unlink()
    with pytest.raises(DatasetFormatError, match="labelmap"):
        read_dataset(plain, VOCABULARY)

    with pytest.raises(DatasetFormatError, match="not a folder"):
        read_dataset(tmp_path / "nowhere", VOCABULARY)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="dataset.json"):
        read_dataset(broken, VOCABULARY)


def test_malformed_labelmap_is_a_dataset_error(tmp_path: Path, msd_phantoms: Path) -> None:
    plain = write_plain(msd_phantoms, tmp_path / "plain", {"labels": {1: "liver"}}, {PHANTOM["liver"]: 1})
    (plain / "labelmap.yaml").write_text("labels: {liver: 1}\n")  # inverted: names as keys
    with pytest.raises(DatasetFormatError, match="labelmap.yaml"):
        read_dataset(plain, VOCABULARY)
    (plain / "labelmap.yaml").write_text("labels: {0: background}\n")
    with pytest.raises(DatasetFormatError, match="no labels"):
        read_dataset(plain, VOCABULARY)


# ---------------------------------------------------------------- masks


def _phantom_case_with(msd_phantoms: Path, *values: int) -> tuple[np.ndarray, np.ndarray]:
    for _, label_path in msd_cases(msd_phantoms):
        label, affine = load_label(label_path)
        if all((label == v).any() for v in values):
            return label, affine
    raise AssertionError(f"no phantom case contains all of {values}")


@pytest.mark.parametrize("organ, lesion", [("liver", "liver_tumor"), ("pancreas", "pancreas_tumor")])
def test_organ_mask_includes_the_lesions_inside_it(msd_phantoms: Path, organ: str, lesion: str) -> None:
    label, affine = _phantom_case_with(msd_phantoms, PHANTOM[lesion])
    masks = target_masks(label, affine, VOCABULARY.dataset("latentseg_phantoms"), VOCABULARY)
    inside = label == PHANTOM[lesion]
    assert inside.any()
    np.testing.assert_array_equal(masks[lesion], inside)
    np.testing.assert_array_equal(masks[organ], (label == PHANTOM[organ]) | inside)
    np.testing.assert_array_equal(masks["spleen"], label == PHANTOM["spleen"])  # no lesion: unchanged


def _true_kidneys(label: np.ndarray) -> dict[str, np.ndarray]:
    """Each kidney with the tumour components that touch it (the phantom's ground truth)."""
    tumour = label == PHANTOM["kidney_tumor"]
    components, count = ndimage.label(tumour)
    truth = {}
    for name in ("kidney_left", "kidney_right"):
        kidney = label == PHANTOM[name]
        near = ndimage.binary_dilation(kidney, iterations=1)
        touching = [i for i in range(1, count + 1) if (near & (components == i)).any()]
        truth[name] = kidney | np.isin(components, touching)
    return truth


def test_kits_style_lateral_split_follows_the_patients_sides(msd_phantoms: Path) -> None:
    kits = VOCABULARY.dataset("kits23")
    checked_tumour = False
    for _, label_path in msd_cases(msd_phantoms):
        phantom, affine = load_label(label_path)
        kits_label = np.zeros_like(phantom)
        kits_label[(phantom == PHANTOM["kidney_left"]) | (phantom == PHANTOM["kidney_right"])] = 1
        kits_label[phantom == PHANTOM["kidney_tumor"]] = 2
        masks = target_masks(kits_label, affine, kits, VOCABULARY)
        truth = _true_kidneys(phantom)
        np.testing.assert_array_equal(masks["kidney_left"], truth["kidney_left"])
        np.testing.assert_array_equal(masks["kidney_right"], truth["kidney_right"])
        # RAS+: the patient's left kidney lies at smaller world x than the right one.
        world_x = (affine[0, :3] @ np.indices(phantom.shape).reshape(3, -1) + affine[0, 3]).reshape(phantom.shape)
        assert world_x[masks["kidney_left"]].max() < world_x[masks["kidney_right"]].min()
        tumour = masks["kidney_tumor"]
        if tumour.any():
            checked_tumour = True
            in_left, in_right = (tumour & masks["kidney_left"]).any(), (tumour & masks["kidney_right"]).any()
            assert in_left != in_right  # joins one kidney, the one on its side
    assert checked_tumour


def test_lateral_split_with_unequal_sides_and_an_lps_affine() -> None:
    # World x = 20 - 2i (the voxel axis runs to the patient's left, as in LPS data).
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[0, 3] = 20.0
    label = np.zeros((20, 4, 4), np.int32)
    label[1:4] = 1  # x 18..14: the patient's right, small
    label[11:19] = 1  # x -2..-16: the patient's left, much larger (a median would split it)
    label[16:18, 1:3, 1:3] = 2  # a tumour in the left kidney
    masks = target_masks(label, affine, VOCABULARY.dataset("kits23"), VOCABULARY)
    left = np.zeros(label.shape, bool)
    left[11:19] = True
    np.testing.assert_array_equal(masks["kidney_left"], left)
    np.testing.assert_array_equal(masks["kidney_right"], (label > 0) & ~left)
    # An explicit midline (the body's) is used as given.
    shifted = target_masks(label, affine, VOCABULARY.dataset("kits23"), VOCABULARY, midline_x=-9.0)
    assert shifted["kidney_right"][11:15].all() and not shifted["kidney_right"][15:19].any()


def test_lesion_joins_only_the_organ_on_its_side_when_one_side_is_annotated() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # RAS: world x = 2i
    label = np.zeros((20, 4, 4), np.int32)
    label[2:6] = 1  # left kidney (x 4..10)
    label[14:18, 1:3, 1:3] = 2  # a tumour on the patient's right (x 28..34), whose kidney is not annotated
    label_map = DatasetLabelMap("left_only", ((1, "kidney_left"), (2, "kidney_tumor")))
    masks = target_masks(label, affine, label_map, VOCABULARY, midline_x=20.0)
    np.testing.assert_array_equal(masks["kidney_left"], label == 1)
    np.testing.assert_array_equal(masks["kidney_tumor"], label == 2)


def test_prepared_kits_split_matches_explicit_kidney_labels(tmp_path: Path, msd_phantoms: Path) -> None:
    """On the model grid, after resampling and cropping: KiTS-style kidneys == the phantom's own."""
    kits = write_msd_subset(
        msd_phantoms, tmp_path / "kits", name="KiTS",
        labels={"0": "background", "1": "kidney", "2": "tumor"},
        mapping={PHANTOM["kidney_left"]: 1, PHANTOM["kidney_right"]: 1, PHANTOM["kidney_tumor"]: 2},
    )
    kits_source = read_dataset(kits, VOCABULARY)
    truth_source = read_dataset(msd_phantoms, VOCABULARY)
    for kits_files, truth_files in zip(kits_source.cases, truth_source.cases, strict=True):
        split = prepare_case(kits_files, kits_source.label_map, VOCABULARY, PREPROCESS)
        truth = prepare_case(truth_files, truth_source.label_map, VOCABULARY, PREPROCESS)
        for name in ("kidney_left", "kidney_right", "kidney_tumor"):
            target = VOCABULARY.get(name).id
            np.testing.assert_array_equal(split.mask(target), truth.mask(target), err_msg=name)
        assert split.annotated == ids("kidney_left", "kidney_right", "kidney_tumor", "kidney_cyst")


# ---------------------------------------------------------------- partial labels


@pytest.fixture
def spleen_only(tmp_path: Path, msd_phantoms: Path) -> Path:
    """MSD Task09-style: the same phantoms (liver visible in every image) but only spleen annotated."""
    return write_msd_subset(
        msd_phantoms, tmp_path / "spleen", name="Task09_Spleen",
        labels={"0": "background", "1": "spleen"}, mapping={PHANTOM["spleen"]: 1},
    )


def test_annotated_reflects_the_mapping_table(spleen_only: Path, msd_phantoms: Path) -> None:
    spleen = read_dataset(spleen_only, VOCABULARY)
    case = prepare_case(spleen.cases[0], spleen.label_map, VOCABULARY, PREPROCESS)
    assert case.annotated == ids("spleen")
    assert case.present() == ids("spleen")
    liver = VOCABULARY.get("liver").id
    assert not case.mask(liver).any()  # the liver is in the image but unknown here, not a mask
    phantoms = read_dataset(msd_phantoms, VOCABULARY)
    full = prepare_case(phantoms.cases[0], phantoms.label_map, VOCABULARY, PREPROCESS)
    assert full.annotated == ids(*(name for _, name in PHANTOM_LABELS))


def test_partially_labelled_dataset_yields_only_its_targets(spleen_only: Path) -> None:
    source = read_dataset(spleen_only, VOCABULARY)
    cases = prepare_sources([source], VOCABULARY, PREPROCESS, None)
    sampler = PatchSampler(cases, PREPROCESS.patch_size, foreground_prob=0.3, seed=1)
    batch = sampler.batch(200)
    spleen = VOCABULARY.get("spleen").id
    assert set(batch.target_ids.tolist()) == {spleen}
    # Both kinds of spleen examples occur: with spleen, and empty (spleen annotated, absent here).
    positives = batch.masks.flatten(1).amax(1) > 0
    assert 0 < int(positives.sum()) < 200


def test_mixed_datasets_never_sample_an_unannotated_target(tmp_path: Path, spleen_only: Path, msd_phantoms: Path) -> None:
    liver_only = write_msd_subset(
        msd_phantoms, tmp_path / "liver", name="Task03_Liver",
        labels={"0": "background", "1": "liver", "2": "cancer"},
        mapping={PHANTOM["liver"]: 1, PHANTOM["liver_tumor"]: 2},
    )
    sources = [read_dataset(p, VOCABULARY) for p in (spleen_only, liver_only)]
    cases = prepare_sources(sources, VOCABULARY, PREPROCESS, None)
    assert sorted(cases) == ["msd_task03_liver", "msd_task09_spleen"]
    sampler = PatchSampler(cases, PREPROCESS.patch_size, foreground_prob=0.5, seed=2)
    allowed = set(ids("spleen", "liver", "liver_tumor"))
    seen: set[int] = set()
    for _ in range(25):
        seen |= set(sampler.batch(8).target_ids.tolist())
    assert seen <= allowed
    assert seen >= set(ids("spleen", "liver"))
    # Only the spleen set drawn (the liver set's cases are loaded): only spleen examples.
    spleen_set = PatchSampler(
        cases, PREPROCESS.patch_size, foreground_prob=0.5, seed=2,
        dataset_weights={"msd_task09_spleen": 1.0, "msd_task03_liver": 0.0},
    )
    assert set(spleen_set.batch(100).target_ids.tolist()) == set(ids("spleen"))


# ---------------------------------------------------------------- sampling


def test_foreground_oversampling_raises_the_positive_rate(msd_phantoms: Path) -> None:
    source = read_dataset(msd_phantoms, VOCABULARY)
    cases = prepare_sources([source], VOCABULARY, PREPROCESS, None)

    def positive_rate(foreground_prob: float) -> float:
        sampler = PatchSampler(cases, PREPROCESS.patch_size, foreground_prob=foreground_prob, seed=5)
        masks = sampler.batch(400).masks
        return float((masks.flatten(1).amax(1) > 0).float().mean())

    uniform, oversampled = positive_rate(0.0), positive_rate(0.9)
    assert oversampled > 0.9 * 0.95  # every foreground draw has the target in the patch
    assert oversampled > uniform + 0.25, (uniform, oversampled)


def test_dataset_weights_change_the_mix(spleen_only: Path, msd_phantoms: Path) -> None:
    sources = [read_dataset(p, VOCABULARY) for p in (spleen_only, msd_phantoms)]
    cases = prepare_sources(sources, VOCABULARY, PREPROCESS, None)
    spleen = VOCABULARY.get("spleen").id

    def spleen_share(weights: dict[str, float] | None) -> float:
        sampler = PatchSampler(cases, PREPROCESS.patch_size, seed=3, dataset_weights=weights)
        return float((sampler.batch(300).target_ids == spleen).float().mean())

    # Uniform: half the examples from the spleen set (all spleen) + ~1/12 of the rest.
    assert 0.4 < spleen_share(None) < 0.7
    assert spleen_share({"latentseg_phantoms": 1.0, "msd_task09_spleen": 0.0}) < 0.25
    with pytest.raises(ValueError, match="unknown datasets"):
        PatchSampler(cases, PREPROCESS.patch_size, dataset_weights={"nope": 1.0})


def test_sampler_is_deterministic_per_seed_and_resumable(msd_phantoms: Path) -> None:
    source = read_dataset(msd_phantoms, VOCABULARY)
    cases = prepare_sources([source], VOCABULARY, PREPROCESS, None)
    a = PatchSampler(cases, PREPROCESS.patch_size, seed=11)
    b = PatchSampler(cases, PREPROCESS.patch_size, seed=11)
    first = a.batch(4)
    assert np.array_equal(first.images, b.batch(4).images)
    state = a.state()
    after = a.batch(4)
    b.set_state(state)
    replay = b.batch(4)
    assert np.array_equal(after.images, replay.images) and np.array_equal(after.target_ids, replay.target_ids)
    assert not np.array_equal(after.images, first.images)


# ---------------------------------------------------------------- cache


def test_prepare_case_cache_round_trip(tmp_path: Path, msd_phantoms: Path) -> None:
    source = read_dataset(msd_phantoms, VOCABULARY)
    cache = tmp_path / "cache"
    fresh = prepare_case(source.cases[0], source.label_map, VOCABULARY, PREPROCESS, cache)
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 1 and not list(cache.glob("*.tmp*"))
    with np.load(files[0]) as npz:
        np.testing.assert_array_equal(npz["image"], fresh.image)
        np.testing.assert_array_equal(npz["bits"], fresh.bits)
    again = prepare_case(source.cases[0], source.label_map, VOCABULARY, PREPROCESS, cache)
    np.testing.assert_array_equal(again.image, fresh.image)
    np.testing.assert_array_equal(again.bits, fresh.bits)
    assert again.annotated == fresh.annotated and again.dataset == fresh.dataset
    # The reload really comes from the cache: tamper with it and the tampering shows.
    with np.load(files[0]) as npz:
        np.savez_compressed(files[0], image=np.zeros_like(npz["image"]), bits=npz["bits"])
    assert not prepare_case(source.cases[0], source.label_map, VOCABULARY, PREPROCESS, cache).image.any()
    # A different config is a different key, so it never reads the stale entry.
    other = PREPROCESS.model_copy(update={"intensity_max": 300.0})
    prepare_case(source.cases[0], source.label_map, VOCABULARY, other, cache)
    assert len(list(cache.glob("*.npz"))) == 2


def test_prepare_case_is_on_the_model_grid_and_cropped_to_the_body(msd_phantoms: Path) -> None:
    source = read_dataset(msd_phantoms, VOCABULARY)
    case = prepare_case(source.cases[0], source.label_map, VOCABULARY, PREPROCESS)
    assert case.image.dtype == np.float32 and case.bits.dtype == np.uint64
    assert case.image.shape == case.bits.shape
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0
    # 64x64x16 at 6x6x8 mm is 384x384x128 mm; at 4 mm and cropped to the body it is smaller.
    assert all(n <= m for n, m in zip(case.image.shape, (96, 96, 32), strict=True))
    # Liver (patient's right) at larger x than the spleen: the grid is RAS.
    liver = np.argwhere(case.mask(VOCABULARY.get("liver").id))[:, 0].mean()
    spleen = np.argwhere(case.mask(VOCABULARY.get("spleen").id))[:, 0].mean()
    assert liver > spleen


def test_label_volume_of_another_shape_is_a_clear_error(tmp_path: Path, msd_phantoms: Path) -> None:
    image, label = msd_cases(msd_phantoms)[0]
    bad_label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), str(bad_label))
    with pytest.raises(DatasetFormatError, match="label.nii.gz"):
        prepare_case(CaseFiles(image, bad_label), VOCABULARY.dataset("phantoms"), VOCABULARY, PREPROCESS)


def test_msd_json_paths_may_be_written_with_or_without_dot(tmp_path: Path, msd_phantoms: Path) -> None:
    root = tmp_path / "msd"
    shutil.copytree(msd_phantoms, root)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = [{k: v.removeprefix("./") for k, v in c.items()} for c in meta["training"]]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert len(read_dataset(root, VOCABULARY).cases) == 3


def test_context_patches_carry_the_neighbouring_slices(msd_phantoms: Path) -> None:
    source = read_dataset(msd_phantoms, VOCABULARY)
    cases = prepare_sources([source], VOCABULARY, PREPROCESS, None)
    plain = PatchSampler(cases, PREPROCESS.patch_size, seed=7)
    context = PatchSampler(cases, PREPROCESS.patch_size, seed=7, context_slices=1)
    a, b = plain.batch(16), context.batch(16)
    assert b.images.shape == (16, 3, *PREPROCESS.patch_size) and b.slices.shape == a.images.shape
    # The same draws: the slice channel is the plain patch, and its neighbours are nearby but different slices.
    assert torch.equal(b.slices, a.images) and torch.equal(b.masks, a.masks)
    differs = (b.images[:, 1:] - b.images[:, :1]).flatten(1).abs().amax(1) > 0
    assert int(differs.sum()) >= 12
    assert float((b.images[:, 1:] - b.images[:, :1]).abs().mean()) < float((b.images[:8] - b.images[8:]).abs().mean())


# ---------------------------------------------------------------- real-data options (issue 16)


def test_a_totalsegmentator_label_table_under_another_name_uses_the_mapping_table(tmp_path: Path, msd_phantoms: Path) -> None:
    # TotalSegmentator's names and ids (most of its 117 structures are no vocabulary targets): the values of the
    # names that resolve agree with the totalsegmentator_v2 table, so that table maps the dataset.
    labels = {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "pancreas": 7,
              "lung_upper_lobe_left": 10, "vertebrae_L1": 31, "aorta": 52, "inferior_vena_cava": 63}
    mapping = {PHANTOM["spleen"]: 1, PHANTOM["kidney_right"]: 2, PHANTOM["kidney_left"]: 3, PHANTOM["liver"]: 5,
               PHANTOM["pancreas"]: 7, PHANTOM["aorta"]: 52, PHANTOM["inferior_vena_cava"]: 63}
    root = write_nnunet_v2(msd_phantoms, tmp_path / "hospital", labels, mapping, name="Dataset901_HospitalTS")
    source = read_dataset(root, VOCABULARY)
    assert source.label_map.name == "totalsegmentator_v2"
    case = prepare_case(source.cases[0], source.label_map, VOCABULARY, PREPROCESS)
    assert set(ids("liver", "spleen", "aorta")) <= set(case.present())
    # A table whose resolvable names disagree with every known one stays a clear error naming the bad label.
    odd = dict(labels, liver=6)  # liver under another value than TotalSegmentator's
    root2 = write_nnunet_v2(msd_phantoms, tmp_path / "odd", odd, {PHANTOM["liver"]: 6}, name="Dataset902_Odd")
    with pytest.raises(DatasetFormatError, match="vertebrae_L1"):
        read_dataset(root2, VOCABULARY)


def test_select_cases_leaves_a_patient_out_and_rejects_unknown_names(msd_phantoms: Path) -> None:
    source = read_dataset(msd_phantoms, VOCABULARY)
    names = [case_id(c) for c in source.cases]
    assert len(names) == 3 and all(not n.endswith(".gz") for n in names)
    kept = select_cases([source], exclude=[names[0]])
    assert [case_id(c) for c in kept[0].cases] == names[1:]
    only = select_cases([source], include=[names[2]])
    assert [case_id(c) for c in only[0].cases] == [names[2]]
    with pytest.raises(DatasetFormatError, match="no case named nobody"):
        select_cases([source], exclude=["nobody"])
    with pytest.raises(DatasetFormatError, match="no case left"):
        select_cases([source], exclude=names)


def test_restrict_targets_makes_other_targets_unannotated(msd_phantoms: Path) -> None:
    source = read_dataset(msd_phantoms, VOCABULARY)
    cases = prepare_sources([source], VOCABULARY, PREPROCESS, None)
    annotated = sorted(source.label_map.annotated, key=lambda n: VOCABULARY.get(n).id)
    kept, names = restrict_targets(cases, annotated, ["liver", "kidney_left"], VOCABULARY)
    assert names == ["kidney_left", "liver"]
    sampler = PatchSampler(kept, PREPROCESS.patch_size, seed=0)
    assert set(sampler.batch(64).target_ids.tolist()) == set(ids("liver", "kidney_left"))
    with pytest.raises(DatasetFormatError, match="esophagus"):
        restrict_targets(cases, annotated, ["esophagus"], VOCABULARY)


def test_sampler_applies_the_augmenter_reproducibly(msd_phantoms: Path) -> None:
    from training.augmentation.augment import AugmentConfig, PatchAugmenter

    source = read_dataset(msd_phantoms, VOCABULARY)
    cases = prepare_sources([source], VOCABULARY, PREPROCESS, None)
    augment = PatchAugmenter(AugmentConfig(enabled=True, affine_prob=1.0))
    plain = PatchSampler(cases, PREPROCESS.patch_size, seed=4).batch(8)
    first = PatchSampler(cases, PREPROCESS.patch_size, seed=4, augment=augment).batch(8)
    again = PatchSampler(cases, PREPROCESS.patch_size, seed=4, augment=augment).batch(8)
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    assert not torch.equal(first.images, plain.images)
    assert set(torch.unique(first.masks).tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------- near-miss negatives


def _marked_case(depth: int = 40, *, spleen_annotated: bool = True) -> tuple[PreparedCase, int, int]:
    """A 96x96xdepth case whose image encodes each voxel's slice (z / 100) plus 0.5 on the in-plane
    footprint of the liver, which is present on slices 15-24 only; the spleen is present on every slice."""
    liver, spleen = ids("liver")[0], ids("spleen")[0]
    image = np.broadcast_to(np.arange(depth, dtype=np.float32) / 100.0, (96, 96, depth)).copy()
    image[30:50, 40:60, :] += 0.5
    bits = np.zeros((96, 96, depth), dtype=np.uint64)
    bits[30:50, 40:60, 15:25] |= np.uint64(1) << np.uint64(liver)
    bits[60:80, 20:40, :] |= np.uint64(1) << np.uint64(spleen)
    annotated = (liver, spleen) if spleen_annotated else (liver,)
    return PreparedCase("d", "c", image, bits, annotated), liver, spleen


def test_near_miss_negatives_show_the_targets_place_just_beyond_its_extent() -> None:
    case, liver, spleen = _marked_case(spleen_annotated=False)
    sampler = PatchSampler({"d": [case]}, (64, 64), foreground_prob=0.0, negative_prob=1.0, negative_margin=5, seed=3)
    assert sampler.near_slices(case, liver).tolist() == [10, 11, 12, 13, 14, 25, 26, 27, 28, 29]
    slices = set()
    for _ in range(200):
        image, mask, target = sampler.example()
        assert target == liver and mask.max() == 0  # the liver is absent there: an empty mask
        assert image[0].max() >= 0.5  # yet the patch shows the liver's in-plane place
        z = int(round(float(np.median(image[0][image[0] < 0.5])) * 100))
        slices.add(z)
    assert slices and slices <= {10, 11, 12, 13, 14, 25, 26, 27, 28, 29}
    assert min(slices) < 15 and max(slices) > 24  # both sides of the organ


def test_a_target_on_every_slice_falls_back_to_uniform_draws() -> None:
    case, liver, spleen = _marked_case()
    sampler = PatchSampler({"d": [case]}, (64, 64), foreground_prob=0.0, negative_prob=1.0, negative_margin=5, seed=4)
    assert sampler.near_slices(case, spleen).size == 0
    drawn = [sampler.example() for _ in range(200)]
    # Spleen draws fall back to uniform ones: the spleen then shows up in some patches, never in a near-miss.
    assert any(mask.max() > 0 for _, mask, t in drawn if t == spleen)


def test_near_miss_negatives_change_nothing_when_off_and_check_their_share() -> None:
    case, _, _ = _marked_case()
    a = PatchSampler({"d": [case]}, (64, 64), foreground_prob=0.7, seed=9)
    b = PatchSampler({"d": [case]}, (64, 64), foreground_prob=0.7, negative_prob=0.0, negative_margin=3, seed=9)
    assert torch.equal(a.batch(20).images, b.batch(20).images)
    with pytest.raises(ValueError, match="negative_prob"):
        PatchSampler({"d": [case]}, (64, 64), foreground_prob=0.9, negative_prob=0.2)


def test_near_miss_negatives_lower_the_positive_rate_near_the_organ() -> None:
    # Against uniform draws at the same foreground share, near-miss draws land next to the organ.
    case, liver, _ = _marked_case()
    def near_share(negative_prob: float) -> float:
        sampler = PatchSampler({"d": [case]}, (64, 64), foreground_prob=0.5, negative_prob=negative_prob,
                               negative_margin=5, seed=6)
        hits = 0
        for _ in range(400):
            image, mask, target = sampler.example()
            z = int(round(float(np.median(image[0][image[0] < 0.5])) * 100))
            hits += target == liver and mask.max() == 0 and z in sampler.near_slices(case, liver) and image[0].max() >= 0.5
        return hits / 400
    assert near_share(0.5) > near_share(0.0) + 0.15


def test_a_mirrored_case_is_reported_and_the_true_one_is_not(
    tmp_path: Path, msd_phantoms: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A header that mirrors the patient puts the liver on the left and the spleen on the right: say so."""
    image, label = msd_cases(msd_phantoms)[0]
    source = read_dataset(msd_phantoms, VOCABULARY)
    with caplog.at_level("WARNING", logger="training.data"):
        prepare_case(CaseFiles(image, label), source.label_map, VOCABULARY, PREPROCESS)
    assert "flipped" not in caplog.text
    mirrored = []
    for path in (image, label):
        nii = nib.load(str(path))
        out = tmp_path / path.name
        nib.save(nib.Nifti1Image(np.asarray(nii.dataobj)[::-1].copy(), nii.affine, nii.header), str(out))
        mirrored.append(out)
    with caplog.at_level("WARNING", logger="training.data"):
        prepare_case(CaseFiles(*mirrored), source.label_map, VOCABULARY, PREPROCESS)
    assert "left-right axis flipped" in caplog.text and label.name in caplog.text
    for organ, side in (("liver", "right"), ("spleen", "left"), ("kidney_left", "left"), ("kidney_right", "right")):
        assert f"{organ} lies" in caplog.text and f"(expected: {side})" in caplog.text


def test_laterality_problems_reads_world_x_through_the_affine() -> None:
    """An LPS-like affine (x growing to the patient's left) flips what 'right' means in voxel terms."""
    mask = np.zeros((40, 8, 8), bool)
    mask[2:8] = True  # low voxel x
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    lps = np.diag([-1.0, 1.0, 1.0, 1.0])
    # RAS+: low x is the patient's left, where the spleen belongs and the liver does not.
    assert laterality_problems({"spleen": mask}, ras, 30.0, VOCABULARY) == []
    assert "liver lies" in laterality_problems({"liver": mask}, ras, 30.0, VOCABULARY)[0]
    # Under the negated x axis the same voxels are on the patient's right (world x -2..-7 vs midline -30).
    assert laterality_problems({"liver": mask}, lps, -30.0, VOCABULARY) == []
    assert "(expected: left)" in laterality_problems({"spleen": mask}, lps, -30.0, VOCABULARY)[0]
    # Near the midline (within the margin) nothing is said; unsided organs are never checked.
    assert laterality_problems({"spleen": mask}, ras, 0.0, VOCABULARY) == []
    assert laterality_problems({"aorta": mask}, ras, 30.0, VOCABULARY) == []
