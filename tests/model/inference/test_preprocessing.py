"""Geometry round trips (oblique, LPS, anisotropic) and NIfTI input checks."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from model.bundle.loaded import LoadedBundle
from model.bundle.config import PreprocessConfig
from model.errors import InputError
from model.inference.pipeline import segment_file
from model.inference.preprocessing import (
    Volume,
    axial_slices,
    context_offsets,
    from_axial_slices,
    load_nifti,
    sanitize_hu,
    scale_intensity,
    to_model_grid,
    to_source_grid,
    with_context,
)

CENTRE = np.array([12.0, -20.0, 35.0])  # world (RAS, mm)
RADIUS = 30.0


def rotation(ax: float, az: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def affine_for(linear: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """An affine whose voxel grid is centred on CENTRE."""
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = CENTRE - linear @ ((np.array(shape) - 1) / 2)
    return affine


CASES = {
    "oblique": (rotation(0.35, 0.5) @ np.diag([2.5, 2.5, 3.0]), (40, 40, 36)),
    "lps": (np.diag([-2.0, -2.0, 2.5]), (48, 44, 40)),
    "anisotropic": (np.diag([1.6, 1.6, 6.0]), (64, 60, 18)),
}


def world_coordinates(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def sphere(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.linalg.norm(world_coordinates(affine, shape) - CENTRE, axis=-1) <= RADIUS


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def case_volume(name: str) -> Volume:
    linear, shape = CASES[name]
    affine = affine_for(linear, shape)
    data = np.where(sphere(affine, shape), 60.0, -900.0).astype(np.float32)
    return Volume(data=data, affine=affine)


@pytest.mark.parametrize("name", list(CASES))
def test_sphere_survives_the_round_trip_through_the_model_grid(name: str) -> None:
    volume = case_volume(name)
    config = PreprocessConfig(spacing=(3.0, 3.0, 3.0))
    grid = to_model_grid(volume, config)
    # model grid: bundle spacing, axes closest to R, A, S
    assert np.allclose(np.linalg.norm(grid.affine[:3, :3], axis=0), 3.0)
    assert nib.aff2axcodes(grid.affine) == ("R", "A", "S")
    # the sphere is where the world says it is on the model grid
    on_grid = grid.hu.numpy() > -420
    assert dice(on_grid, sphere(grid.affine, grid.hu.shape)) > 0.9
    # and back onto the input's own voxels
    back = to_source_grid(torch.from_numpy(on_grid.astype(np.float32))[None], grid.affine, volume.affine, volume.shape)
    assert tuple(back.shape) == (1, *volume.shape)
    assert dice(back[0].numpy() > 0.5, volume.data > -420) > 0.9


def test_a_shifted_affine_would_be_detected() -> None:
    """The Dice check above can fail: the same data with a wrong affine misses the sphere."""
    volume = case_volume("lps")
    wrong = volume.affine.copy()
    wrong[:3, 3] += 25.0
    grid = to_model_grid(Volume(volume.data, wrong), PreprocessConfig())
    assert dice(grid.hu.numpy() > -420, sphere(grid.affine, grid.hu.shape)) < 0.5


@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_outputs_have_the_inputs_shape_and_affine(name: str, random_bundle: LoadedBundle, tmp_path: Path) -> None:
    volume = case_volume(name)
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(volume.data, volume.affine), str(path))
    source = nib.load(str(path))
    written = segment_file(random_bundle, path, tmp_path / "out", "liver", ensemble=1, steps=1, seed=0)
    images = [p for p in written if p.name.endswith(".nii.gz")]
    assert sorted(p.name for p in images) == ["labels.nii.gz", "liver_mean.nii.gz", "liver_variance.nii.gz"]
    for p in images:
        out = nib.load(str(p))
        assert out.shape == source.shape
        assert np.array_equal(out.affine, source.affine)
        assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(source.affine)


def test_scale_intensity_and_slices() -> None:
    config = PreprocessConfig(intensity_min=-100, intensity_max=300)
    hu = torch.tensor([-1000.0, -100.0, 100.0, 300.0, 3000.0])
    assert torch.allclose(scale_intensity(hu, config), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    volume = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    slices = axial_slices(volume)
    assert slices.shape == (4, 1, 2, 3)
    assert torch.equal(slices[1, 0], volume[:, :, 1])
    assert torch.equal(from_axial_slices(slices)[0], volume)


def test_context_slices_come_after_the_slice_and_repeat_the_edge() -> None:
    assert context_offsets(0) == (0,)
    assert context_offsets(2) == (0, -1, 1, -2, 2)
    volume = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    slices = axial_slices(volume)
    assert with_context(slices, 0) is slices
    stacked = with_context(slices, 1)
    assert stacked.shape == (4, 3, 2, 3)
    for z in range(4):
        assert torch.equal(stacked[z, 0], volume[:, :, z])
        assert torch.equal(stacked[z, 1], volume[:, :, max(z - 1, 0)])
        assert torch.equal(stacked[z, 2], volume[:, :, min(z + 1, 3)])


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_load_nifti_reads_hu_and_affine(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 1000
    affine = np.diag([-0.7, -0.7, 5.0, 1.0])
    volume = load_nifti(save(tmp_path / "a.nii.gz", data, affine))
    assert volume.data.dtype == np.float32 and np.array_equal(volume.data, data)
    assert np.allclose(volume.affine, affine)
    assert load_nifti(save(tmp_path / "b.nii", data[..., None])).shape == (2, 3, 4)  # 4-D, one volume


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: save(d / "flat.nii.gz", np.zeros((16, 16), np.float32)), "3-D"),
        (lambda d: save(d / "four.nii.gz", np.zeros((8, 8, 8, 3), np.float32)), "3-D"),
        (lambda d: (d / "notes.nii.gz").write_text("hello") and d / "notes.nii.gz", "not a NIfTI"),
        (lambda d: (d / "noise.nii").write_bytes(bytes(range(256)) * 4) and d / "noise.nii", "not a NIfTI"),
        (lambda d: d / "missing.nii.gz", "no such file"),
        (lambda d: d, "no such file"),
    ],
    ids=["2d", "4d-three-volumes", "text", "random-bytes", "missing", "directory"],
)
def test_load_nifti_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_nifti(make(tmp_path))


def test_singular_affine_is_rejected(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    with pytest.raises(InputError, match="singular|affine"):
        load_nifti(tmp_path / "s.nii.gz")


def test_non_finite_voxels_policy(tmp_path: Path) -> None:
    data = np.zeros((3, 3, 3), np.float32)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.inf, -np.inf
    volume = load_nifti(save(tmp_path / "nan.nii.gz", data))
    assert np.isfinite(volume.data).all()
    assert volume.data[0, 0, 0] == -1024.0  # NaN is air
    assert volume.data[1, 1, 1] == 4095.0
    assert volume.data[2, 2, 2] == -1024.0
    assert volume.data[0, 1, 2] == 0.0
    assert np.array_equal(sanitize_hu(np.array([1.5], np.float32)), np.array([1.5], np.float32))
