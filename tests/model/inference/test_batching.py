"""Batching, chunking, cropping and streaming never change results for a fixed seed.

The speed work in ``model.inference.pipeline`` / ``model.inference.ensemble`` (large denoiser batches, decode
sub-batches, slices per chunk, the patient crop, separable slab-wise resampling, streamed
writing) must be invisible in the outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from model.bundle.loaded import LoadedBundle
from model.inference.ensemble import WindowKey, decode_batch_size, denoiser_batch_size, sample_window_probabilities
from model.inference.pipeline import (
    Segmentation,
    SegmentationOptions,
    body_box,
    predict_model_grid,
    segment_file,
    segment_volume,
)
from model.inference.preprocessing import Volume, to_source_grid
from model.inference.resampling import resample_to_source
from model.inference.writing import write_segmentation
from model.targets.vocabulary import default_vocabulary


def body_volume(shape=(44, 36, 7), seed: int = 0) -> Volume:
    """Soft tissue in air on a 4 mm LPS grid, wide enough for two windows across with a 40 mm table."""
    rng = np.random.default_rng(seed)
    data = np.full(shape, -1000.0, np.float32)
    data[6:-6, 5:-9, :] = rng.normal(40, 80, (shape[0] - 12, shape[1] - 14, shape[2]))
    data[:, -4:-2, :] = 300.0  # a thin table spanning the whole width
    return Volume(data=data, affine=np.diag([-4.0, -4.0, 4.0, 1.0]))


OPTS = SegmentationOptions(ensemble=2, steps=2, seed=3)


@pytest.fixture(scope="module")
def volume() -> Volume:
    return body_volume()


@pytest.fixture(scope="module")
def reference(random_bundle: LoadedBundle, volume: Volume) -> Segmentation:
    return segment_volume(random_bundle, volume, "liver,spleen", OPTS)


@pytest.mark.parametrize(
    "options",
    [
        dataclasses.replace(OPTS, max_batch=1),  # the naive per-sample loop
        dataclasses.replace(OPTS, max_batch=3, slices_per_chunk=1),
        dataclasses.replace(OPTS, max_batch=1000, slices_per_chunk=7),
    ],
    ids=["per-sample", "small-batches", "one-chunk"],
)
def test_batch_and_chunk_sizes_do_not_change_results(
    random_bundle: LoadedBundle, volume: Volume, reference: Segmentation, options: SegmentationOptions
) -> None:
    result = segment_volume(random_bundle, volume, "liver,spleen", options)
    for name in ("liver", "spleen"):
        assert reference.mean[name].max() > 0.05
        assert np.allclose(result.mean[name], reference.mean[name], atol=1e-5, rtol=0)
        assert np.allclose(result.variance[name], reference.variance[name], atol=1e-5, rtol=0)


def test_decode_sub_batches_do_not_change_probabilities(random_bundle: LoadedBundle) -> None:
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    keys = [WindowKey(0, 0, 0), WindowKey(1, 0, 0), WindowKey(2, 8, 8)]
    run = lambda decode: sample_window_probabilities(  # noqa: E731
        random_bundle, random_bundle.process(2), images, keys, [6, 1], ensemble=2, seed=0, sampler="ddpm",
        max_batch=12, decode_batch=decode,
    )
    whole, single = run(12), run(1)
    assert torch.allclose(whole, single, atol=1e-5)
    assert (whole[:, :, 0] - whole[:, :, 1]).abs().max() > 1e-3


def test_batch_sizes_follow_memory(random_bundle: LoadedBundle) -> None:
    cfg = random_bundle.config
    assert denoiser_batch_size(cfg, 256, 1 << 30) == 256
    assert 1 <= denoiser_batch_size(cfg, 256, 1 << 16) < 256
    assert denoiser_batch_size(cfg, 256, 1) == 1
    assert decode_batch_size(cfg, 256, budget_bytes=1 << 40) == 256
    assert decode_batch_size(cfg, 256, budget_bytes=1) == 1


def test_streamed_file_equals_in_memory_result(
    random_bundle: LoadedBundle, volume: Volume, reference: Segmentation, tmp_path: Path
) -> None:
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume.data, volume.affine), str(source))
    streamed = segment_file(random_bundle, source, tmp_path / "streamed", "liver,spleen", options=OPTS)
    in_memory = write_segmentation(reference, tmp_path / "memory")
    # segment_file also writes statistics.json (it has the CT for the HU figures; a Segmentation alone does not)
    assert [p.name for p in streamed] == [p.name for p in in_memory] + ["statistics.json"]
    for a, b in zip(streamed[:-1], in_memory, strict=True):
        if a.suffix == ".json":
            assert a.read_text() == b.read_text()
            continue
        ia, ib = nib.load(str(a)), nib.load(str(b))
        assert ia.get_data_dtype() == ib.get_data_dtype()
        assert np.array_equal(ia.affine, ib.affine)
        assert np.array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj))


def test_labels_take_the_first_target_on_ties() -> None:
    vocab = default_vocabulary()
    liver, spleen = vocab.get("liver"), vocab.get("spleen")
    seg = Segmentation(
        targets=(liver, spleen),
        mean={"liver": np.array([[[0.6, 0.7, 0.2, 0.5]]], np.float32), "spleen": np.array([[[0.6, 0.8, 0.1, 0.5]]], np.float32)},
        variance={}, affine=np.eye(4),
    )
    assert seg.labels().tolist() == [[[liver.id, spleen.id, 0, 0]]]


def test_body_box_leaves_out_the_table_and_air(volume: Volume) -> None:
    body = torch.from_numpy(volume.data > -500)
    rows, cols = body_box(body, (16, 16))
    assert (rows.start, rows.stop) == (6, 44 - 6)  # the table spans every row, the patient does not
    assert (cols.start, cols.stop) == (5, 36 - 9)
    grown = body_box(body, (64, 30))
    assert (grown[0].start, grown[0].stop) == (0, 44)  # the grid is smaller than a window
    assert grown[1].stop - grown[1].start == 30 and grown[1].start <= 5 and grown[1].stop >= 27
    assert body_box(torch.zeros(8, 8, 3, dtype=torch.bool), (4, 4)) is None


def test_cropping_keeps_every_patient_voxel(random_bundle: LoadedBundle, volume: Volume) -> None:
    prediction = predict_model_grid(random_bundle, volume, "liver", OPTS)
    patient = np.zeros(volume.shape, bool)
    patient[6:-6, 5:-9, :] = True
    # model grid = input grid flipped to RAS (same 4 mm spacing)
    mean = np.flip(prediction.mean[0].numpy(), axis=(0, 1))
    assert (mean[patient] > 0).all()


def _oblique(degrees: float) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("z", degrees, degrees=True).as_matrix() @ np.diag([0.9, 0.8, 2.5])
    affine[:3, 3] = (4.0, -7.0, 3.0)
    return affine


@pytest.mark.parametrize(
    ("affine", "shape"),
    [
        (np.diag([0.8, 0.8, 2.5, 1.0]), (70, 60, 30)),  # RAS
        (np.array([[-0.8, 0, 0, 20], [0, -0.7, 0, 11], [0, 0, 2.5, -5], [0, 0, 0, 1]]), (70, 60, 30)),  # LPS
        (np.array([[0, 0, 2.5, 1], [-0.8, 0, 0, 2], [0, 0.9, 0, 3], [0, 0, 0, 1.0]]), (30, 70, 60)),  # permuted axes
        (_oblique(20.0), (70, 60, 30)),  # oblique: the slab-wise fallback
    ],
    ids=["ras", "lps", "permuted", "oblique"],
)
def test_resampling_matches_to_source_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> None:
    model_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    model_affine[:3, 3] = (-30.0, -25.0, -20.0)
    channel = torch.rand(22, 20, 28, generator=torch.Generator().manual_seed(1))
    expected = to_source_grid(channel[None], model_affine, affine, shape)[0].numpy()
    got = resample_to_source(channel, model_affine, affine, shape)
    assert got.shape == shape and got.dtype == np.float32
    assert np.abs(expected).max() > 0.1 and (expected == 0).any()  # inside and outside the model grid
    assert np.allclose(got, expected, atol=1e-5, rtol=0)
