"""training.augmentation.augment: MONAI patch augmentation keeps image and mask aligned and is reproducible per seed."""

from __future__ import annotations

import numpy as np

from training.augmentation.augment import AugmentConfig, PatchAugmenter

SPATIAL_ONLY = dict(intensity_prob=0.0, gamma_prob=0.0, noise_prob=0.0, blur_prob=0.0, thick_slice_prob=0.0)


def _square(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((size, size), np.float32)
    mask[20:40, 16:44] = 1.0
    image = np.stack([mask * 0.8 + 0.1, mask * 0.8 + 0.1, mask * 0.8 + 0.1])  # slice and two context slices
    return image, mask


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_spatial_transforms_move_image_and_mask_together() -> None:
    augment = PatchAugmenter(AugmentConfig(enabled=True, affine_prob=1.0, elastic_prob=1.0, **SPATIAL_ONLY))
    image, mask = _square()
    moved = 0
    for seed in range(6):
        out_image, out_mask = augment(image, mask, seed)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        assert set(np.unique(out_mask).tolist()) <= {0.0, 1.0}
        bright = out_image[0] > 0.5
        assert _dice(bright, out_mask > 0.5) > 0.9, seed  # the mask follows the image's square
        assert np.allclose(out_image[0], out_image[1]) and np.allclose(out_image[0], out_image[2])  # one transform for all slices
        moved += _dice(out_mask > 0.5, mask > 0.5) < 0.95
    assert moved >= 3  # the transforms do change the patch


def test_same_seed_same_result_other_seed_other_result() -> None:
    augment = PatchAugmenter(AugmentConfig(enabled=True, affine_prob=1.0, noise_prob=1.0))
    image, mask = _square()
    a = augment(image, mask, 11)
    b = augment(image, mask, 11)
    c = augment(image, mask, 12)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_intensity_transforms_leave_the_mask_and_stay_in_range() -> None:
    config = AugmentConfig(enabled=True, affine_prob=0.0, elastic_prob=0.0, intensity_prob=1.0, gamma_prob=1.0,
                           noise_prob=1.0, blur_prob=1.0, thick_slice_prob=1.0)
    augment = PatchAugmenter(config)
    image, mask = _square()
    out_image, out_mask = augment(image, mask, 3)
    assert np.array_equal(out_mask, mask)
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0
    assert not np.allclose(out_image, image)


def test_no_left_right_flip_among_the_transforms() -> None:
    # An asymmetric patch (object on one side) never lands mirrored: with rotation <= 15 degrees and
    # shifts <= 10 % the object's centre stays on its side.
    augment = PatchAugmenter(AugmentConfig(enabled=True, affine_prob=1.0, elastic_prob=0.0, **SPATIAL_ONLY))
    mask = np.zeros((64, 64), np.float32)
    mask[24:40, 4:18] = 1.0
    image = np.stack([mask])
    for seed in range(10):
        _, out = augment(image, mask, seed)
        assert np.argwhere(out > 0)[:, 1].mean() < 32, seed
