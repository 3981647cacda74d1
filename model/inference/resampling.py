"""Model-grid maps back onto the input's own voxel grid (exact shape and affine), slab by slab.

:func:`resample_to_source` gives the same values as
:func:`model.inference.preprocessing.to_source_grid` (bilinear, zero outside) but bounds its
temporaries to about ``RESAMPLE_CHUNK_VOXELS`` output voxels, so one full-resolution map is the
largest array it makes. The way in (to the model grid) is
:func:`model.inference.preprocessing.to_model_grid`, shared with training.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from model.inference.preprocessing import to_source_grid

RESAMPLE_CHUNK_VOXELS = 1 << 23  # output voxels per resampling slab (bounds temporaries to ~100 MB)


def resample_to_source(
    channel: torch.Tensor,
    model_affine: np.ndarray,
    source_affine: np.ndarray,
    source_shape: tuple[int, int, int],
    *,
    clip: tuple[float | None, float | None] = (None, None),
) -> np.ndarray:
    """One (X, Y, Z) model-grid map, linearly resampled onto the input grid: float32 (I, J, K).

    Same values as :func:`model.inference.preprocessing.to_source_grid` (bilinear, zero outside). When
    each input axis maps onto one model axis (any flip, permutation or spacing: every
    non-oblique input), the interpolation is separable and done axis by axis, slab by slab;
    oblique inputs go through ``to_source_grid`` one slab of input slices at a time.
    """
    xform = np.linalg.solve(np.asarray(model_affine, np.float64), np.asarray(source_affine, np.float64))
    linear = xform[:3, :3]
    significant = np.abs(linear) > 1e-9 * np.abs(linear).max()
    shape = tuple(int(s) for s in source_shape)
    # The result is in Fortran order, NIfTI's own voxel order, so writing it needs no transposing
    # copy: computed as the C-ordered (K, J, I) array with every axis reversed, then transposed.
    if (significant.sum(axis=0) == 1).all() and (significant.sum(axis=1) == 1).all():
        reversed_xform = np.eye(4)
        reversed_xform[:3, :3] = linear[::-1, ::-1]
        reversed_xform[:3, 3] = xform[:3, 3][::-1]
        out_t = np.empty(shape[::-1], np.float32)
        array_t = np.ascontiguousarray(channel.numpy().astype(np.float32, copy=False).transpose(2, 1, 0))
        _resample_separable(array_t, reversed_xform, 2 - significant.argmax(axis=1)[::-1], out_t)
        out = out_t.T
    else:
        out = np.empty(shape, np.float32, order="F")
        _resample_oblique(channel, model_affine, source_affine, out)
    lo, hi = clip
    if lo is not None or hi is not None:
        np.clip(out, lo, hi, out=out)
    return out


def _linear_weights(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weights for linear interpolation at ``positions`` (zero outside)."""
    floor = np.floor(positions)
    frac = (positions - floor).astype(np.float32)
    i0 = floor.astype(np.int64)
    i1 = i0 + 1
    w0 = np.where((i0 >= 0) & (i0 < size), 1.0 - frac, 0.0).astype(np.float32)
    w1 = np.where((i1 >= 0) & (i1 < size), frac, 0.0).astype(np.float32)
    return np.clip(i0, 0, size - 1), w0, np.clip(i1, 0, size - 1), w1


def _interpolate_axis(array: np.ndarray, axis: int, weights: tuple[np.ndarray, ...]) -> np.ndarray:
    i0, w0, i1, w1 = weights
    shape = [1] * array.ndim
    shape[axis] = -1
    result = np.take(array, i0, axis=axis)
    result *= w0.reshape(shape)
    upper = np.take(array, i1, axis=axis)
    upper *= w1.reshape(shape)
    result += upper
    return result


def _resample_separable(array: np.ndarray, xform: np.ndarray, source_axis_of: np.ndarray, out: np.ndarray) -> None:
    """out[i, j, k] = trilinear(array) at xform @ (i, j, k, 1), one model axis at a time."""
    view = out.transpose(tuple(int(a) for a in source_axis_of))  # view axis r = model axis r
    weights = []
    for r in range(3):
        c = int(source_axis_of[r])
        positions = xform[r, c] * np.arange(out.shape[c], dtype=np.float64) + xform[r, 3]
        weights.append(_linear_weights(positions, array.shape[r]))
    # The axis that grows the most goes last and is done slab by slab straight into ``out``.
    order = sorted(range(3), key=lambda r: view.shape[r] / array.shape[r])
    last = order[-1]
    for r in order[:-1]:
        array = _interpolate_axis(array, r, weights[r])
    slab_axis = order[0]
    per_index = max(1, math.prod(view.shape) // view.shape[slab_axis])
    step = max(1, RESAMPLE_CHUNK_VOXELS // per_index)
    for start in range(0, view.shape[slab_axis], step):
        index = [slice(None)] * 3
        index[slab_axis] = slice(start, start + step)
        view[tuple(index)] = _interpolate_axis(array[tuple(index)], last, weights[last])


def _resample_oblique(channel: torch.Tensor, model_affine: np.ndarray, source_affine: np.ndarray, out: np.ndarray) -> None:
    height, width, depth = out.shape
    step = max(1, RESAMPLE_CHUNK_VOXELS // (height * width))
    for start in range(0, depth, step):
        stop = min(depth, start + step)
        shifted = np.asarray(source_affine, np.float64).copy()
        shifted[:3, 3] += shifted[:3, 2] * start  # the affine of the slab's first slice
        slab = to_source_grid(channel[None], model_affine, shifted, (height, width, stop - start))
        out[:, :, start:stop] = slab[0].numpy()
