"""Spatial and intensity augmentation of 2-D / 2.5-D training patches (MONAI dictionary transforms).

A scarce set of real CT cases is multiplied by transforming each (image window, mask) patch the
way scanners and patients differ: a random affine (scale, rotation, translation, shear) and an
elastic deformation applied identically to every image channel (the slice and its context
slices) and to the mask (nearest neighbour), then intensity scale/shift, gamma, Gaussian noise
and blur on the image alone, and a simulated thicker slice (the context slices averaged into the
centre one). No left-right flips: they would swap the kidneys and adrenal glands.

Every random draw comes from a seed that the caller passes per example (the patch sampler draws
it from its own generator), so a resumed run continues the same augmented stream.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field

from model.bundle.config import FrozenConfig


class AugmentConfig(FrozenConfig):
    """Probabilities and ranges; ``enabled: false`` (the default) trains on the patches as they are."""

    enabled: bool = False
    affine_prob: float = Field(0.8, ge=0, le=1)
    scale: tuple[float, float] = Field((0.8, 1.2), description="isotropic zoom range (1 = unchanged)")
    rotate_degrees: float = Field(15.0, ge=0, le=180, description="in-plane rotation, ± degrees")
    translate_fraction: float = Field(0.1, ge=0, le=0.5, description="shift, ± this fraction of the patch side")
    shear: float = Field(0.05, ge=0, le=0.5)
    elastic_prob: float = Field(0.2, ge=0, le=1)
    elastic_sigma: tuple[float, float] = Field((9.0, 13.0), description="smoothness of the displacement (pixels)")
    elastic_magnitude: tuple[float, float] = Field((40.0, 120.0), description="displacement magnitude (pixels)")
    intensity_prob: float = Field(0.5, ge=0, le=1)
    intensity_scale: float = Field(0.1, ge=0, le=1, description="x(1+s), s in ±this")
    intensity_shift: float = Field(0.08, ge=0, le=1, description="+s, s in ±this (image range is [0, 1])")
    gamma_prob: float = Field(0.3, ge=0, le=1)
    gamma: tuple[float, float] = Field((0.7, 1.5))
    noise_prob: float = Field(0.3, ge=0, le=1)
    noise_std: float = Field(0.03, ge=0, le=1)
    blur_prob: float = Field(0.2, ge=0, le=1)
    blur_sigma: tuple[float, float] = Field((0.3, 1.0), description="Gaussian blur sigma (pixels)")
    thick_slice_prob: float = Field(0.15, ge=0, le=1, description="average the centre slice with its neighbours")
    contrast_phase_prob: float = Field(
        0.0, ge=0, le=1,
        description="re-enhance the labelled vessels and organs as another contrast phase (training/augmentation/contrast_phase.py)",
    )


class PatchAugmenter:
    """``augment(image (C,H,W), mask (H,W), seed) -> (image, mask)``; channel 0 is the annotated slice
    and channels 1.. its context slices (order of :func:`model.inference.preprocessing.context_offsets`)."""

    def __init__(self, config: AugmentConfig) -> None:
        from monai.transforms import (
            Compose,
            Rand2DElasticd,
            RandAdjustContrastd,
            RandAffined,
            RandGaussianNoised,
            RandGaussianSmoothd,
            RandScaleIntensityd,
            RandShiftIntensityd,
        )

        self.config = config
        c = config
        rot = math.radians(c.rotate_degrees)
        lo, hi = c.scale
        spatial = [
            RandAffined(
                keys=("image", "mask"),
                prob=c.affine_prob,
                rotate_range=(rot,),
                scale_range=((lo - 1.0, hi - 1.0),),
                shear_range=(c.shear, c.shear),
                translate_range=None,  # set per patch size in __call__
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                lazy=False,
            ),
            Rand2DElasticd(
                keys=("image", "mask"),
                spacing=c.elastic_sigma,
                magnitude_range=c.elastic_magnitude,
                prob=c.elastic_prob,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
        ]
        intensity = [
            RandScaleIntensityd(keys="image", factors=c.intensity_scale, prob=c.intensity_prob),
            RandShiftIntensityd(keys="image", offsets=c.intensity_shift, prob=c.intensity_prob),
            RandAdjustContrastd(keys="image", gamma=c.gamma, prob=c.gamma_prob),
            RandGaussianNoised(keys="image", std=c.noise_std, prob=c.noise_prob),
            RandGaussianSmoothd(
                keys="image", sigma_x=c.blur_sigma, sigma_y=c.blur_sigma, prob=c.blur_prob
            ),
        ]
        self._spatial = spatial
        self._transform = Compose([*spatial, *intensity])
        self._translate_for: tuple[int, int] | None = None

    def _set_translate(self, shape: tuple[int, int]) -> None:
        if self._translate_for == shape:
            return
        frac = self.config.translate_fraction
        affine = self._spatial[0]
        affine.rand_affine.rand_affine_grid.translate_range = tuple(  # type: ignore[attr-defined]
            (-frac * s, frac * s) for s in shape
        )
        self._translate_for = shape

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        from monai.data import MetaTensor

        rng = np.random.default_rng(seed)
        self._set_translate(tuple(int(s) for s in image.shape[1:]))  # type: ignore[arg-type]
        self._transform.set_random_state(seed=int(seed % (2**32)))
        data = {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]}
        out = self._transform(data)
        img = out["image"]
        msk = out["mask"]
        img = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        msk = msk.as_tensor() if isinstance(msk, MetaTensor) else torch.as_tensor(msk)
        img_np = img.numpy().astype(np.float32, copy=False)
        if img_np.shape[0] > 1 and rng.random() < self.config.thick_slice_prob:
            # A thicker reconstruction: the centre slice becomes the mean of itself and its nearest
            # neighbours (channels 1 and 2 are the slices at -1 and +1, see context_offsets).
            img_np = img_np.copy()
            img_np[0] = img_np[:3].mean(axis=0)
        return np.clip(img_np, 0.0, 1.0), (msk.numpy()[0] > 0.5).astype(np.float32)
