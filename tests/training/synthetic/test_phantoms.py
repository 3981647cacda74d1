"""Procedural phantoms: determinism, anatomy in world space, tumour containment, HU, written dataset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from training.synthetic.phantoms import (
    PHANTOM_LABELS,
    Phantom,
    PhantomSpec,
    case_seed,
    generate_phantom,
    write_phantom_dataset,
)

SMALL = (96, 96, 24)
ID = {name: value for value, name in PHANTOM_LABELS}


def world_coordinates(phantom: Phantom) -> np.ndarray:
    """(3, I, J, K) RAS+ mm of every voxel centre, computed independently of the generator."""
    ijk = np.indices(phantom.image.shape, dtype=np.float64)
    return np.einsum("ab,b...->a...", phantom.affine[:3, :3], ijk) + phantom.affine[:3, 3, None, None, None]


def centroid(phantom: Phantom, name: str) -> np.ndarray:
    mask = phantom.label == ID[name]
    assert mask.any(), f"{name} missing"
    return world_coordinates(phantom)[:, mask].mean(axis=1)


def test_same_seed_same_case_other_seed_other_case() -> None:
    spec = PhantomSpec(shape=SMALL)
    a, b, c = generate_phantom(7, spec), generate_phantom(7, spec), generate_phantom(8, spec)
    assert a.image.dtype == np.int16 and a.label.dtype == np.uint8 and a.image.shape == SMALL == a.label.shape
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert not np.array_equal(a.label, c.label)
    assert not np.array_equal(a.image, c.image)


def test_every_label_appears_over_a_few_default_cases() -> None:
    seen: set[int] = set()
    per_case = []
    for seed in range(4):
        values = set(np.unique(generate_phantom(seed, PhantomSpec(shape=SMALL)).label).tolist())
        per_case.append(values)
        seen |= values
    assert seen == {0} | {value for value, _ in PHANTOM_LABELS}
    organs = {ID[n] for n in ("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "stomach", "aorta",
                              "inferior_vena_cava")}
    assert all(organs <= values for values in per_case)


@pytest.mark.parametrize(
    "spec",
    [
        PhantomSpec(shape=SMALL, orientation="RAS"),
        PhantomSpec(shape=SMALL, orientation="LPS"),
        PhantomSpec(shape=SMALL, orientation="LAS", oblique_degrees=30.0),
        PhantomSpec(shape=(24, 96, 80), spacing=(8.0, 4.0, 4.0), orientation="SPL"),
    ],
    ids=["RAS", "LPS", "LAS-oblique", "SPL-permuted"],
)
def test_laterality_and_position_in_world_space(spec: PhantomSpec) -> None:
    phantom = generate_phantom(11, spec)
    assert nib.aff2axcodes(phantom.affine) == tuple(spec.orientation)
    liver, spleen = centroid(phantom, "liver"), centroid(phantom, "spleen")
    kidney_left, kidney_right = centroid(phantom, "kidney_left"), centroid(phantom, "kidney_right")
    aorta, ivc = centroid(phantom, "aorta"), centroid(phantom, "inferior_vena_cava")
    # nibabel RAS+: +x is the patient's right, so right-sided organs have x > 0.
    assert spleen[0] < 0 < liver[0]
    assert kidney_left[0] < 0 < kidney_right[0]
    assert aorta[0] < ivc[0]
    assert spleen[1] < liver[1]  # spleen is posterior
    assert kidney_left[1] < centroid(phantom, "pancreas")[1]  # kidneys behind the pancreas


def test_same_seed_is_the_same_patient_under_any_grid() -> None:
    ras = generate_phantom(4, PhantomSpec(shape=SMALL, spacing=(4.2, 4.2, 8.0), orientation="RAS"))
    lps = generate_phantom(4, PhantomSpec(shape=SMALL, spacing=(4.2, 4.2, 8.0), orientation="LPS"))
    # The placement jitter is shared too, so centroids agree up to sampling error.
    np.testing.assert_allclose(centroid(ras, "liver"), centroid(lps, "liver"), atol=3.0)


def test_tumours_lie_inside_their_organs() -> None:
    pairs = (("liver_tumor", "liver"), ("pancreas_tumor", "pancreas"), ("kidney_tumor", None))
    checked = set()
    for seed in range(6):
        label = generate_phantom(seed, PhantomSpec(shape=(128, 128, 48))).label
        for tumour, organ in pairs:
            mask = label == ID[tumour]
            if not mask.any():
                continue
            if organ is None:  # the kidney that holds it
                ring = ndimage.binary_dilation(mask) & ~mask
                organ = max(("kidney_left", "kidney_right"), key=lambda n: int((label[ring] == ID[n]).sum()))
            ring = ndimage.binary_dilation(mask) & ~mask
            inside = np.isin(label[ring], [ID[organ], ID[tumour]]).mean()
            assert inside > 0.9, (seed, tumour, inside)
            checked.add(tumour)
    assert checked == {"liver_tumor", "pancreas_tumor", "kidney_tumor"}


def test_hounsfield_units_are_plausible() -> None:
    phantom = generate_phantom(2, PhantomSpec(shape=(128, 128, 32)))
    image, label = phantom.image.astype(np.float32), phantom.label
    interior = {name: ndimage.binary_erosion(label == ID[name], iterations=1) for name in ("liver", "spleen", "aorta")}
    assert 40 <= np.median(image[interior["liver"]]) <= 80
    assert 30 <= np.median(image[interior["spleen"]]) <= 65
    assert 150 <= np.median(image[interior["aorta"]]) <= 280
    world = world_coordinates(phantom)
    far_outside = (world[1] > 160) | ((np.abs(world[0]) > 200) & (world[1] > -100))
    assert far_outside.any()
    assert np.all(image[far_outside] < -900)
    assert image.max() > 400  # bone
    assert np.all(label[far_outside] == 0)


def test_noise_knob_changes_only_noise() -> None:
    quiet = generate_phantom(3, PhantomSpec(shape=SMALL, noise_hu=0.0))
    noisy = generate_phantom(3, PhantomSpec(shape=SMALL, noise_hu=30.0))
    np.testing.assert_array_equal(quiet.label, noisy.label)
    liver = ndimage.binary_erosion(quiet.label == ID["liver"], iterations=1)
    assert noisy.image[liver].std() > quiet.image[liver].std() + 10


def test_random_grid_stays_in_the_documented_ranges() -> None:
    for seed in range(3):
        spec = PhantomSpec(fov_mm=(120.0, 120.0, 60.0))
        phantom = generate_phantom(seed, spec)
        zooms = np.linalg.norm(phantom.affine[:3, :3], axis=0)
        slice_axis = int(np.argmax(np.abs(phantom.affine[2, :3])))
        in_plane = [zooms[a] for a in range(3) if a != slice_axis]
        assert all(0.6 <= z <= 1.0 for z in in_plane) and 1.5 <= zooms[slice_axis] <= 5.0
        assert np.allclose(np.array(phantom.image.shape) * zooms, spec.fov_mm, atol=zooms.max())


@pytest.mark.parametrize(
    "kwargs",
    [{"shape": (0, 4, 4)}, {"spacing": (1.0, -1.0, 1.0)}, {"orientation": "RAR"}, {"orientation": "XYZ"},
     {"noise_hu": -1.0}],
)
def test_spec_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PhantomSpec(**kwargs)


def test_written_dataset_round_trips_through_nibabel(tmp_path: Path) -> None:
    spec = PhantomSpec(shape=(64, 64, 16), orientation="LPS", oblique_degrees=10.0)
    out = write_phantom_dataset(tmp_path / "ds", cases=2, seed=5, spec=spec)
    assert out == tmp_path / "ds"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "latentseg_phantoms" and meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "CT"} and meta["numTraining"] == 2
    assert meta["labels"] == {"0": "background", **{str(v): n for v, n in PHANTOM_LABELS}}
    assert [c["image"] for c in meta["training"]] == ["./imagesTr/phantom_5_000.nii.gz", "./imagesTr/phantom_5_001.nii.gz"]
    for index, case in enumerate(meta["training"]):
        image = nib.load(out / case["image"])
        label = nib.load(out / case["label"])
        expected = generate_phantom(case_seed(5, index), spec)
        for loaded in (image, label):
            np.testing.assert_allclose(loaded.affine, expected.affine, atol=1e-4)
            assert loaded.header["qform_code"] == 1 and loaded.header["sform_code"] == 1
            assert loaded.shape == expected.image.shape
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(image.dataobj), expected.image)
        np.testing.assert_array_equal(np.asarray(label.dataobj), expected.label)
    assert case_seed(5, 0) != case_seed(5, 1)


def test_noncontrast_cases_have_plain_kidneys_and_leave_other_cases_unchanged() -> None:
    small = PhantomSpec(shape=SMALL)
    plain = generate_phantom(21, small)
    unenhanced = generate_phantom(21, replace(small, noncontrast_prob=1.0))
    never = generate_phantom(21, replace(small, noncontrast_prob=0.0))
    assert np.array_equal(plain.image, never.image)
    assert np.array_equal(plain.label, unenhanced.label)  # same anatomy, other contrast
    kidney = (plain.label == 3) | (plain.label == 4)
    assert kidney.any()
    inner = ndimage.binary_erosion(kidney)  # away from the blurred rim
    assert plain.image[inner].mean() > unenhanced.image[inner].mean() + 40  # corticomedullary enhancement gone
    assert unenhanced.image[inner].mean() < 50  # unenhanced kidneys (~30 HU)
    with pytest.raises(ValueError, match="noncontrast_prob"):
        PhantomSpec(noncontrast_prob=1.5)
