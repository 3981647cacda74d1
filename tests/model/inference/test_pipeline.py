from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from model.bundle.loaded import LatentScale, LoadedBundle, build_networks, load_bundle, save_bundle
from model.bundle.config import tiny_config
from model.errors import InputError
from model.inference.pipeline import SegmentationOptions, segment_file, segment_volume
from model.inference.writing import write_segmentation
from model.inference.preprocessing import Volume
from model.targets.vocabulary import UnknownTargetError, default_vocabulary


def body_volume(shape=(36, 30, 6), seed: int = 0) -> Volume:
    """A soft-tissue blob in air, on a 4 mm (model-spacing) LPS grid."""
    rng = np.random.default_rng(seed)
    data = np.full(shape, -1000.0, np.float32)
    data[4:-4, 4:-4, :] = rng.normal(40, 60, (shape[0] - 8, shape[1] - 8, shape[2]))
    return Volume(data=data, affine=np.diag([-4.0, -4.0, 4.0, 1.0]))


OPTS = SegmentationOptions(ensemble=2, steps=2, seed=0)


@pytest.fixture(scope="module")
def volume() -> Volume:
    return body_volume()


@pytest.fixture(scope="module")
def result(random_bundle: LoadedBundle, volume: Volume):
    return segment_volume(random_bundle, volume, "liver,spleen", OPTS)


def test_mean_in_unit_interval_variance_nonnegative(result, volume: Volume) -> None:
    assert [t.name for t in result.targets] == ["liver", "spleen"]
    for name in ("liver", "spleen"):
        mean, var = result.mean[name], result.variance[name]
        assert mean.shape == var.shape == volume.shape
        assert mean.dtype == np.float32 and var.dtype == np.float32
        assert mean.min() >= 0 and mean.max() <= 1
        assert var.min() >= 0
        assert var.max() > 0  # the random network disagrees with itself somewhere
    assert np.array_equal(result.affine, volume.affine)


def test_same_seed_identical_different_seed_different(random_bundle: LoadedBundle, volume: Volume, result) -> None:
    again = segment_volume(random_bundle, volume, "liver,spleen", OPTS)
    other = segment_volume(random_bundle, volume, "liver,spleen", dataclasses.replace(OPTS, seed=1))
    for name in ("liver", "spleen"):
        assert np.array_equal(again.mean[name], result.mean[name])
        assert np.array_equal(again.variance[name], result.variance[name])
        assert np.abs(other.mean[name] - result.mean[name]).max() > 1e-3


def test_single_member_has_zero_variance(random_bundle: LoadedBundle, volume: Volume) -> None:
    res = segment_volume(random_bundle, volume, "liver", SegmentationOptions(ensemble=1, steps=1, seed=0))
    assert np.array_equal(res.variance["liver"], np.zeros(volume.shape, np.float32))
    assert res.mean["liver"].max() > 0


def test_batching_does_not_change_the_means(random_bundle: LoadedBundle, volume: Volume, result) -> None:
    cfg = random_bundle.config
    small = dataclasses.replace(
        random_bundle, config=cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"max_batch": 3})})
    )
    chunked = dataclasses.replace(OPTS, slices_per_chunk=2)
    res = segment_volume(small, volume, "liver,spleen", chunked)
    by_option = segment_volume(random_bundle, volume, "liver,spleen", dataclasses.replace(OPTS, max_batch=5))
    for name in ("liver", "spleen"):
        assert np.allclose(res.mean[name], result.mean[name], atol=1e-5)
        assert np.allclose(res.variance[name], result.variance[name], atol=1e-5)
        assert np.allclose(by_option.mean[name], result.mean[name], atol=1e-5)


def test_air_only_volume_is_skipped(random_bundle: LoadedBundle) -> None:
    air = Volume(data=np.full((64, 64, 24), -1000.0, np.float32), affine=np.diag([4.0, 4.0, 4.0, 1.0]))
    calls = []
    handle = random_bundle.networks.denoiser.register_forward_hook(lambda *a: calls.append(1))
    try:
        start = time.perf_counter()
        res = segment_volume(random_bundle, air, "liver", SegmentationOptions(ensemble=3, steps=4))
        elapsed = time.perf_counter() - start
    finally:
        handle.remove()
    assert calls == []
    assert elapsed < 5.0
    assert not res.mean["liver"].any() and not res.variance["liver"].any()
    assert not res.labels().any()


def test_progress_is_reported_up_to_one(random_bundle: LoadedBundle, volume: Volume) -> None:
    seen: list[float] = []
    segment_volume(random_bundle, volume, "liver", SegmentationOptions(ensemble=1, steps=1, slices_per_chunk=2),
                   progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 3


def test_writing_reports_one_hundred_percent_only_once_everything_is_written(
    random_bundle: LoadedBundle, volume: Volume, tmp_path: Path
) -> None:
    path = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(volume.data, volume.affine), str(path))
    seen: list[float] = []
    segment_file(random_bundle, path, tmp_path / "out", ["liver"], ensemble=1, steps=1, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and seen.count(1.0) == 1, seen


def test_written_files(random_bundle: LoadedBundle, volume: Volume, tmp_path: Path) -> None:
    path = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(volume.data, volume.affine), str(path))
    written = segment_file(random_bundle, path, tmp_path / "out", ["ivc", "liver"], ensemble=2, steps=2)
    names = sorted(p.name for p in written)
    assert names == sorted(["inferior_vena_cava_mean.nii.gz", "inferior_vena_cava_variance.nii.gz",
                            "liver_mean.nii.gz", "liver_variance.nii.gz", "labels.nii.gz", "labels.json",
                            "statistics.json"])
    vocab = default_vocabulary()
    legend = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert legend == {str(vocab.get("liver").id): "liver", str(vocab.get("ivc").id): "inferior_vena_cava"}
    labels = nib.load(str(tmp_path / "out" / "labels.nii.gz"))
    assert labels.get_data_dtype() == np.uint8
    lab = np.asarray(labels.dataobj)
    means = {n: np.asarray(nib.load(str(tmp_path / "out" / f"{n}_mean.nii.gz")).dataobj) for n in legend.values()}
    assert nib.load(str(tmp_path / "out" / "liver_mean.nii.gz")).get_data_dtype() == np.float32
    assert set(np.unique(lab)) <= {0, *map(int, legend)}
    stack = np.stack([means[legend[k]] for k in sorted(legend, key=int)])
    ids = np.array(sorted(map(int, legend)))
    expected = np.where(stack.max(0) > 0.5, ids[stack.argmax(0)], 0)
    assert np.array_equal(lab, expected)


def test_labels_is_argmax_above_threshold() -> None:
    vocab = default_vocabulary()
    liver, spleen = vocab.get("liver"), vocab.get("spleen")
    from model.inference.pipeline import Segmentation

    seg = Segmentation(
        targets=(liver, spleen),
        mean={"liver": np.array([[[0.9, 0.4, 0.6, 0.1]]], np.float32), "spleen": np.array([[[0.2, 0.45, 0.7, 0.0]]], np.float32)},
        variance={}, affine=np.eye(4),
    )
    assert seg.labels().tolist() == [[[liver.id, 0, spleen.id, 0]]]


def test_untrained_and_unknown_targets(tmp_path: Path, volume: Volume, random_bundle: LoadedBundle) -> None:
    config, vocab = tiny_config(), default_vocabulary()
    path = save_bundle(tmp_path / "liver-only", config=config, vocabulary=vocab, networks=build_networks(config, vocab),
                       latent_scale=LatentScale(1.0, 1.0), trained_targets=("liver",), name="liver-only", version="1")
    bundle = load_bundle(path, device="cpu")
    with pytest.raises(InputError, match=r"not trained for spleen.*liver"):
        segment_volume(bundle, volume, "liver,spleen", OPTS)
    with pytest.raises(UnknownTargetError, match="Valid targets"):
        segment_volume(random_bundle, volume, "livr", OPTS)


@pytest.mark.parametrize("opts", [SegmentationOptions(ensemble=0), SegmentationOptions(steps=0),
                                  SegmentationOptions(ensemble=65), SegmentationOptions(steps=1001)])
def test_invalid_options(opts: SegmentationOptions, random_bundle: LoadedBundle, volume: Volume) -> None:
    with pytest.raises(InputError):
        segment_volume(random_bundle, volume, "liver", opts)


def test_write_segmentation_creates_the_folder(result, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    written = write_segmentation(result, out)
    assert all(p.parent == out and p.exists() for p in written)
    img = nib.load(str(out / "liver_variance.nii.gz"))
    assert np.array_equal(np.asarray(img.dataobj), result.variance["liver"])
    assert torch.is_tensor(torch.as_tensor(np.asarray(img.dataobj)))


def _components(mask: np.ndarray) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask, structure=np.ones((3, 3, 3), bool))[1])


def test_keep_largest_component_zeroes_only_the_smaller_pieces() -> None:
    from model.inference.pipeline import keep_largest_component

    mean = torch.zeros((10, 10, 4))
    mean[1:5, 1:5, 1:3] = 0.9  # the big piece
    mean[7:9, 7:9, 1] = 0.8  # a small island
    mean[6, 1, 0] = 0.4  # below the threshold: untouched
    kept = keep_largest_component(mean)
    assert torch.equal(kept[1:5, 1:5, 1:3], mean[1:5, 1:5, 1:3])
    assert float(kept[7:9, 7:9, 1].abs().max()) == 0.0
    assert float(kept[6, 1, 0]) == pytest.approx(0.4)
    diagonal = torch.zeros((4, 4, 4))
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 0.9  # touching corners: one 26-connected piece
    assert torch.equal(keep_largest_component(diagonal), diagonal)


def test_largest_component_applies_to_connected_targets_only(random_bundle: LoadedBundle) -> None:
    data = np.full((44, 30, 6), -1000.0, np.float32)  # two bodies of tissue, far apart in air
    rng = np.random.default_rng(3)
    data[3:15, 5:25] = rng.normal(40, 60, (12, 20, 6))
    data[29:41, 5:25] = rng.normal(40, 60, (12, 20, 6))
    volume = Volume(data=data, affine=np.diag([-4.0, -4.0, 4.0, 1.0]))
    targets = "liver,liver_tumor"
    raw = segment_volume(random_bundle, volume, targets, dataclasses.replace(OPTS, largest_component=False))
    kept = segment_volume(random_bundle, volume, targets, dataclasses.replace(OPTS, largest_component=True))
    vocabulary = random_bundle.vocabulary
    assert vocabulary.get("liver").connected and not vocabulary.get("liver_tumor").connected
    assert _components(raw.mean["liver"] > 0.5) > 1  # the random model speckles: the test has something to remove
    assert _components(kept.mean["liver"] > 0.5) == 1
    np.testing.assert_array_equal(kept.mean["liver_tumor"], raw.mean["liver_tumor"])
    for name in ("liver", "liver_tumor"):
        np.testing.assert_array_equal(kept.variance[name], raw.variance[name])
    # The bundle's default (off in the tiny config) is what a request without the option gets.
    assert not random_bundle.config.sampling.largest_component
    np.testing.assert_array_equal(segment_volume(random_bundle, volume, targets, OPTS).mean["liver"], raw.mean["liver"])


def test_resolve_overlaps_caps_the_losers_of_one_piece_targets_only() -> None:
    from model.inference.pipeline import resolve_overlaps

    vocabulary = default_vocabulary()
    targets = [vocabulary.get(n) for n in ("liver", "stomach", "liver_tumor", "spleen")]
    mean = torch.zeros((4, 3, 1, 1))
    mean[:, 0, 0, 0] = torch.tensor([0.9, 0.7, 0.8, 0.2])  # liver wins: stomach and spleen capped at 0.1
    mean[:, 1, 0, 0] = torch.tensor([0.55, 0.6, 0.3, 0.1])  # stomach wins: liver capped at 0.4, spleen 0.1 kept
    mean[:, 2, 0, 0] = torch.tensor([0.3, 0.3, 0.9, 0.2])  # a tie below 0.5: the first (liver) wins; nobody above 0.7
    before = mean.clone()
    out = resolve_overlaps(mean, targets)
    assert out is mean
    got = mean[:, :, 0, 0]
    assert got[:, 0].tolist() == pytest.approx([0.9, 0.1, 0.8, 0.1])
    assert got[:, 1].tolist() == pytest.approx([0.4, 0.6, 0.3, 0.1])
    assert got[:, 2].tolist() == pytest.approx([0.3, 0.3, 0.9, 0.2])
    torch.testing.assert_close(mean[2], before[2])  # a lesion lies inside its organ: never capped
    # At most one one-piece target keeps each voxel above 0.5.
    assert int(((mean[[0, 1, 3]] > 0.5).sum(dim=0) > 1).sum()) == 0
    single = before[:1].clone()
    assert torch.equal(resolve_overlaps(single, targets[:1]), before[:1])  # one target: nothing to resolve


def test_exclusive_option_leaves_one_label_per_voxel(random_bundle: LoadedBundle, volume: Volume) -> None:
    targets = "liver,spleen,stomach,liver_tumor"
    overlapping = segment_volume(random_bundle, volume, targets, dataclasses.replace(OPTS, exclusive=False))
    exclusive = segment_volume(random_bundle, volume, targets, dataclasses.replace(OPTS, exclusive=True))
    organs = ("liver", "spleen", "stomach")

    def claims(seg) -> np.ndarray:
        return np.sum([seg.mean[name] > 0.5 for name in organs], axis=0)

    assert int((claims(overlapping) > 1).sum()) > 0  # the random model lets organs overlap: something to resolve
    assert int((claims(exclusive) > 1).sum()) == 0
    np.testing.assert_array_equal(exclusive.mean["liver_tumor"], overlapping.mean["liver_tumor"])
    for name in organs:
        np.testing.assert_array_equal(exclusive.variance[name], overlapping.variance[name])
        assert (exclusive.mean[name] <= overlapping.mean[name] + 1e-6).all()  # capping only lowers
    assert not random_bundle.config.sampling.exclusive  # the tiny config's default: overlapping
    np.testing.assert_array_equal(segment_volume(random_bundle, volume, targets, OPTS).mean["liver"],
                                  overlapping.mean["liver"])


def test_a_context_bundle_reads_the_neighbouring_slices(tmp_path: Path) -> None:
    base = tiny_config()
    denoiser = base.denoiser.model_copy(update={"image_pixels": True, "context_slices": 1})
    config = type(base).from_dict(base.model_copy(update={"denoiser": denoiser}).to_dict())
    from model.bundle.loaded import write_random_bundle

    bundle = load_bundle(write_random_bundle(tmp_path / "context", seed=4, config=config), device="cpu")
    volume = body_volume()
    ref = segment_volume(bundle, volume, "liver", OPTS).mean["liver"]
    # Brighten slice 3 only: with one context slice each side, slices 2-4 change and slices 0-1 and 5 do not.
    data = volume.data.copy()
    data[4:-4, 4:-4, 3] += 150.0
    got = segment_volume(bundle, Volume(data=data, affine=volume.affine), "liver", OPTS).mean["liver"]
    changed = [bool(np.abs(got[..., z] - ref[..., z]).max() > 1e-4) for z in range(volume.data.shape[2])]
    assert changed == [False, False, True, True, True, False]
