"""Bringing CT volumes to the model's grid and back (shared by training and inference).

The model grid is RAS-oriented with the bundle's spacing; axial slices are indexed by the
last axis (S) and each slice is an (R, A) = (H, W) image. Intensities are clipped to the
bundle's HU window and scaled to [0, 1]. Predictions are brought back to the input's own
voxel grid by resampling through the two affines, so outputs have exactly the input's
shape and affine, including oblique, LPS and anisotropic inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, SpatialResample, Spacing

from model.bundle.config import PreprocessConfig
from model.errors import InputError


@dataclass(frozen=True)
class Volume:
    """A CT volume in Hounsfield units on its own voxel grid."""

    data: np.ndarray  # (I, J, K) float32 HU
    affine: np.ndarray  # 4x4 voxel -> RAS+ mm

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelGridVolume:
    """A volume resampled to the model grid (RAS, bundle spacing)."""

    hu: torch.Tensor  # (X, Y, Z) float32 HU
    affine: np.ndarray  # 4x4 voxel -> RAS+ mm


def check_affine(affine: np.ndarray, where: str) -> None:
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"{where}: affine is not a finite 4x4 matrix")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(f"{where}: affine is singular (zero voxel size or degenerate axes)")


def load_nifti(path: str | Path) -> Volume:
    """Read a 3-D NIfTI (or 4-D with one volume) into HU float32. Errors are :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for non-NIfTI input
        raise InputError(f"{path}: not a NIfTI image ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image (got {type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {tuple(img.shape)}")
    if min(shape) < 1:
        raise InputError(f"{path}: empty volume {tuple(shape)}")
    if min(shape) < 2:
        raise InputError(f"{path}: expected a 3-D volume, got a single slice {tuple(shape)} (a 2-D image)")
    affine = np.asarray(img.affine, dtype=np.float64)
    check_affine(affine, str(path))
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise InputError(f"{path}: voxel data could not be read ({exc})") from exc
    return Volume(data=sanitize_hu(data), affine=affine)


def sanitize_hu(data: np.ndarray) -> np.ndarray:
    """Documented policy for non-finite voxels: NaN and -Inf -> -1024 HU (air), +Inf -> 4095 HU."""
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=-1024.0, posinf=4095.0, neginf=-1024.0)
    return data.astype(np.float32, copy=False)


def to_model_grid(volume: Volume, config: PreprocessConfig, mode: str = "bilinear") -> ModelGridVolume:
    """Reorient to RAS and resample to ``config.spacing``."""
    meta = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.data))[None], affine=torch.from_numpy(volume.affine))
    meta = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(meta)
    meta = Spacing(pixdim=config.spacing, mode=mode, padding_mode="border")(meta)
    affine = np.asarray(meta.affine, dtype=np.float64)
    return ModelGridVolume(hu=meta.as_tensor()[0].float().contiguous(), affine=affine)


def scale_intensity(hu: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Clip to the HU window and scale to [0, 1]."""
    lo, hi = config.intensity_min, config.intensity_max
    return ((hu.clamp(lo, hi) - lo) / (hi - lo)).float()


def body_mask(hu: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Voxels that belong to the patient (above the body threshold)."""
    return hu > config.body_threshold_hu


def axial_slices(volume: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) model-grid volume -> (Z, 1, X, Y) batch of axial slices."""
    return volume.permute(2, 0, 1).unsqueeze(1).contiguous()


def context_offsets(context_slices: int) -> tuple[int, ...]:
    """Slice offsets of an image window's channels: the slice itself first, then -1, +1, -2, +2, ...

    The centre comes first so that a bundle gains context by appending input channels."""
    return (0, *(sign * k for k in range(1, context_slices + 1) for sign in (-1, 1)))


def with_context(slices: torch.Tensor, context_slices: int) -> torch.Tensor:
    """(Z, 1, X, Y) axial slices -> (Z, 1 + 2k, X, Y): each slice with its neighbours (the edge slice repeats
    past the ends of the volume, as training patches do)."""
    if not context_slices:
        return slices
    z = torch.arange(slices.shape[0])
    index = torch.stack([(z + o).clamp(0, slices.shape[0] - 1) for o in context_offsets(context_slices)], dim=1)
    return slices[:, 0][index]


def from_axial_slices(slices: torch.Tensor) -> torch.Tensor:
    """(Z, C, X, Y) -> (C, X, Y, Z)."""
    return slices.permute(1, 2, 3, 0).contiguous()


def to_source_grid(
    channels: torch.Tensor,
    model_affine: np.ndarray,
    source_affine: np.ndarray,
    source_shape: tuple[int, int, int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resample (C, X, Y, Z) model-grid maps onto the input's voxel grid: (C, I, J, K)."""
    meta = MetaTensor(channels.float(), affine=torch.from_numpy(model_affine))
    out = SpatialResample(mode=mode, padding_mode="zeros")(
        meta, dst_affine=torch.from_numpy(source_affine), spatial_size=source_shape
    )
    return out.as_tensor().float()
