"""Volume in, per-target mean and variance masks out (paper §3.1 inference).

1. read the NIfTI and bring it to the model grid (RAS, bundle spacing), scale intensities;
2. crop to the patient (the largest body component's in-plane box, grown to at least one
   window; the scanner table and air around it are left out), then MONAI sliding-window
   inference over axial slices with the bundle's 2-D patch size; each window is encoded
   once, and every (window, target, ensemble member) is sampled in latent space in large
   batches and decoded; windows and slices with no body voxel are skipped (probability 0,
   variance 0);
3. blend windows, take the mean and variance over the ensemble, resample each map back onto
   the input grid (exact shape and affine) one target at a time, and write
   ``{target}_mean.nii.gz``, ``{target}_variance.nii.gz``, ``labels.nii.gz`` and ``labels.json``.

Memory: everything up to step 3 lives on the (small) model grid. :func:`segment_file`
streams step 3, so only one full-resolution map plus the label accumulator exist at a time
and peak memory does not grow with the number of targets. :func:`segment_volume` returns
every map in memory (for callers that want arrays).

``bundle`` is a :class:`model.bundle.loaded.LoadedBundle` (torch) or any object with the same
sampling surface, such as :class:`model.bundle.onnx_backend.OnnxBundle`.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from model.bundle.loaded import LoadedBundle
from model.inference.ensemble import (
    WindowKey,
    denoiser_batch_size,
    ensemble_statistics,
    member_mask_overlaps,
    sample_window_probabilities,
)
from model.bundle.manifest import check_sampling, resolve_sampling
from model.errors import InputError
from model.inference.preprocessing import (
    Volume,
    axial_slices,
    body_mask,
    load_nifti,
    scale_intensity,
    to_model_grid,
    to_source_grid,
    with_context,
)
from model.inference.statistics import MemberSummary, ReviewPolicy, StatisticsWriter
from model.targets.vocabulary import Target

if TYPE_CHECKING:
    from model.bundle.onnx_backend import OnnxBundle

log = logging.getLogger(__name__)

Progress = Callable[[float], None]

SAMPLING_SHARE = 0.9  # progress fraction reported once sampling is done; the rest is resampling/writing
RESAMPLE_CHUNK_VOXELS = 1 << 23  # output voxels per resampling slab (bounds temporaries to ~100 MB)
CPU_ACTIVATION_BUDGET_BYTES = 1 << 30  # denoiser activations per batch on CPU
BODY_EROSION_VOXELS = 2  # in-plane erosion that detaches the scanner table before picking the patient


@dataclass(frozen=True)
class SegmentationOptions:
    """Per-request sampling options.

    ``slices_per_chunk``: axial slices per sliding-window call; None picks enough slices to
    fill one denoiser batch. ``max_batch``: denoiser batch cap (window × target × member
    pairs); None uses the bundle's ``sampling.max_batch``. Neither changes results.
    """

    ensemble: int | None = None  # None: the bundle's default (sampling.ensemble)
    steps: int | None = None  # None: the bundle's default (sampling.steps)
    seed: int = 0
    sampler: str | None = None  # None: the bundle's default
    largest_component: bool | None = None  # None: the bundle's default (sampling.largest_component)
    slices_per_chunk: int | None = None
    max_batch: int | None = None

    def check(self) -> None:
        check_sampling(self.ensemble, self.steps)
        if self.slices_per_chunk is not None and self.slices_per_chunk < 1:
            raise InputError(f"slices_per_chunk must be >= 1, got {self.slices_per_chunk}")
        if self.max_batch is not None and self.max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {self.max_batch}")


@dataclass(frozen=True)
class Segmentation:
    """Results on the input's voxel grid, keyed by target name."""

    targets: tuple[Target, ...]
    mean: dict[str, np.ndarray]  # float32 in [0, 1]
    variance: dict[str, np.ndarray]  # float32 >= 0
    affine: np.ndarray
    members: dict[str, MemberSummary] = field(default_factory=dict)  # per-member volumes (model grid)

    def labels(self, threshold: float = 0.5) -> np.ndarray:
        """uint8 label map: the vocabulary id of the most probable target where its mean > threshold
        (ties go to the earlier target)."""
        labels = _LabelAccumulator(next(iter(self.mean.values())).shape)
        for target in self.targets:
            labels.add(target.id, self.mean[target.name])
        return labels.result(threshold)


@dataclass(frozen=True)
class ModelGridPrediction:
    """Ensemble statistics on the model grid, before resampling to the input grid.

    mean, variance: (T, X, Y, Z) float32 on the model grid (``model_affine``).
    member_voxels: (T, E) int64, each member's voxels with probability > 0.5 (before any
    largest-component post-processing); member_intersections: (T, E, E) int64, voxels above it in
    both members (see :func:`model.inference.ensemble.member_mask_overlaps`).
    """

    targets: tuple[Target, ...]
    mean: torch.Tensor
    variance: torch.Tensor
    model_affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    member_voxels: torch.Tensor | None = None
    member_intersections: torch.Tensor | None = None

    def members(self, index: int) -> MemberSummary | None:
        """Target ``index``'s per-member counts (None when they were not accumulated)."""
        if self.member_voxels is None or self.member_intersections is None:
            return None
        voxel_ml = abs(float(np.linalg.det(np.asarray(self.model_affine, np.float64)[:3, :3]))) / 1000.0
        return MemberSummary.from_counts(self.member_voxels[index].tolist(), self.member_intersections[index].tolist(),
                                         voxel_ml)

    def mean_on_source(self, index: int) -> np.ndarray:
        """Target ``index``'s mean probability on the input grid: float32 in [0, 1]."""
        return resample_to_source(self.mean[index], self.model_affine, self.source_affine, self.source_shape,
                                  clip=(0.0, 1.0))

    def variance_on_source(self, index: int) -> np.ndarray:
        """Target ``index``'s ensemble variance on the input grid: float32 >= 0."""
        return resample_to_source(self.variance[index], self.model_affine, self.source_affine, self.source_shape,
                                  clip=(0.0, None))


class _LabelAccumulator:
    """Running argmax over targets, one map at a time (first target wins ties, as ``argmax``)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.best = np.full(shape, -np.inf, np.float32, order="F")  # the maps' (NIfTI) voxel order
        self.ids = np.zeros(shape, np.uint8, order="F")

    def add(self, target_id: int, mean: np.ndarray) -> None:
        better = mean > self.best
        np.copyto(self.best, mean, where=better)
        self.ids[better] = target_id

    def result(self, threshold: float) -> np.ndarray:
        return np.where(self.best > threshold, self.ids, np.uint8(0)).astype(np.uint8, order="F")


def resolve_targets(
    bundle: LoadedBundle | OnnxBundle, targets: Sequence[str] | str, *, unserved: bool = False
) -> tuple[Target, ...]:
    """Vocabulary targets the bundle was trained for and serves (raises InputError naming the problem).

    ``unserved=True`` also accepts trained targets the bundle does not serve: scoring them (evaluation)
    is how one learns whether they should be."""
    resolved = bundle.vocabulary.resolve(targets)
    untrained = [t.name for t in resolved if t.name not in bundle.trained_targets]
    if untrained:
        raise InputError(
            f"bundle {bundle.name!r} was not trained for {', '.join(untrained)}; "
            f"it knows: {', '.join(bundle.served_targets)}"
        )
    refused = [] if unserved else [t.name for t in resolved if t.name not in bundle.served_targets]
    if refused:
        reasons = "; ".join(f"{n}: {bundle.manifest.unserved_reason(n)}" for n in refused)
        raise InputError(
            f"bundle {bundle.name!r} does not serve {', '.join(refused)} ({reasons}); "
            f"it serves: {', '.join(bundle.served_targets)}"
        )
    return resolved


# --------------------------------------------------------------------------- cropping
def body_box(body: torch.Tensor, patch_size: Sequence[int]) -> tuple[slice, slice] | None:
    """In-plane (X, Y) box around the patient, at least ``patch_size`` where the grid allows.

    body: (X, Y, Z) bool. The patient is the largest 3-D component of the body mask after an
    in-plane erosion (which detaches the thin scanner table); the box is that component's
    extent, grown back by the erosion and then, centred, to at least one window. None when
    there is no body voxel at all.
    """
    mask = body.numpy() if isinstance(body, torch.Tensor) else np.asarray(body)
    if not mask.any():
        return None
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    core = ndimage.binary_erosion(mask, structure=in_plane, iterations=BODY_EROSION_VOXELS)
    if not core.any():
        core = mask
    components, count = ndimage.label(core)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        core = components == int(sizes.argmax())
    projection = core.any(axis=2)
    box = []
    for axis, patch in zip((0, 1), patch_size, strict=True):
        present = np.nonzero(projection.any(axis=1 - axis))[0]
        size = mask.shape[axis]
        lo = max(0, int(present[0]) - BODY_EROSION_VOXELS)
        hi = min(size, int(present[-1]) + 1 + BODY_EROSION_VOXELS)
        if hi - lo < patch:
            lo = max(0, min(lo - (patch - (hi - lo)) // 2, size - patch))
            hi = min(size, lo + patch)
        box.append(slice(lo, hi))
    return box[0], box[1]


def _windows_along(size: int, patch: int, overlap: float) -> int:
    if size <= patch:
        return 1
    interval = max(1, int(patch * (1 - overlap)))
    return math.ceil((size - patch) / interval) + 1


# --------------------------------------------------------------------------- sampling
def predict_model_grid(
    bundle: LoadedBundle | OnnxBundle,
    volume: Volume,
    targets: Sequence[str] | str,
    options: SegmentationOptions = SegmentationOptions(),
    progress: Progress | None = None,
    *,
    unserved: bool = False,
) -> ModelGridPrediction:
    """Steps 1-2 and the ensemble statistics, on the model grid (progress up to ``SAMPLING_SHARE``);
    ``unserved`` as in :func:`resolve_targets` (evaluation only)."""
    options.check()
    resolved = resolve_targets(bundle, targets, unserved=unserved)
    cfg = bundle.config
    ensemble, steps = resolve_sampling(cfg.sampling, options.ensemble, options.steps)
    pre = cfg.preprocess
    grid = to_model_grid(volume, pre)
    hu = grid.hu
    num_targets = len(resolved)
    mean = torch.zeros((num_targets, *hu.shape), dtype=torch.float32)
    variance = torch.zeros_like(mean)
    member_voxels = torch.zeros((num_targets, ensemble), dtype=torch.int64)
    member_intersections = torch.zeros((num_targets, ensemble, ensemble), dtype=torch.int64)
    prediction = ModelGridPrediction(resolved, mean, variance, grid.affine, volume.affine, volume.shape,
                                     member_voxels, member_intersections)
    body = body_mask(hu, pre)
    box = body_box(body, pre.patch_size)
    if box is None:
        _report(progress, SAMPLING_SHARE)
        return prediction
    rows, cols = box
    # (Z, C_window, x, y): each slice, then its context slices
    image_slices = with_context(axial_slices(scale_intensity(hu[rows, cols], pre)), cfg.denoiser.context_slices)
    channels = image_slices.shape[1]
    body_slices = axial_slices(body[rows, cols].float())
    slice_has_body = body_slices.flatten(1).amax(dim=1) > 0
    num_slices = image_slices.shape[0]
    process = bundle.process(steps)
    sampler = options.sampler or cfg.sampling.sampler
    max_batch = denoiser_batch_size(cfg, options.max_batch or cfg.sampling.max_batch, _memory_budget(bundle.device))
    target_ids = [t.id for t in resolved]
    pairs_per_window = num_targets * ensemble
    windows_per_slice = _windows_along(rows.stop - rows.start, pre.patch_size[0], cfg.sampling.overlap) * _windows_along(
        cols.stop - cols.start, pre.patch_size[1], cfg.sampling.overlap
    )
    # Whole denoiser batches: a chunk holds as many slices as fit in one batch (never a 256 + 4 split).
    chunk_slices = options.slices_per_chunk or max(1, max_batch // (pairs_per_window * windows_per_slice))
    windows_per_call = max(1, max_batch // pairs_per_window)

    for chunk_start in range(0, num_slices, chunk_slices):
        chunk = slice(chunk_start, min(chunk_start + chunk_slices, num_slices))
        if bool(slice_has_body[chunk].any()):
            inputs = torch.cat([image_slices[chunk], body_slices[chunk]], dim=1)  # (z, C_window + 1, x, y)

            def predictor(windows: torch.Tensor, coords: list[list[slice]], offset: int = chunk_start) -> torch.Tensor:
                n, _, h, w = windows.shape
                out = torch.zeros((n, pairs_per_window, h, w), dtype=torch.float32)
                has_body = windows[:, channels].flatten(1).amax(dim=1) > 0
                keep = torch.nonzero(has_body).flatten().tolist()
                if keep:
                    keys = [
                        WindowKey(offset + coords[i][0].start, rows.start + coords[i][2].start, cols.start + coords[i][3].start)
                        for i in keep
                    ]
                    probs = sample_window_probabilities(
                        bundle, process, windows[keep, :channels], keys, target_ids,
                        ensemble=ensemble, seed=options.seed, sampler=sampler,
                        eta=cfg.sampling.eta, max_batch=max_batch,
                    )
                    out[keep] = probs.view(len(keep), pairs_per_window, h, w)
                return out

            blended = sliding_window_inference(
                inputs,
                roi_size=pre.patch_size,
                sw_batch_size=windows_per_call,
                predictor=predictor,
                overlap=cfg.sampling.overlap,
                mode="gaussian",
                padding_mode="constant",
                cval=0.0,
                with_coord=True,
            )
            blended = torch.as_tensor(blended).view(-1, num_targets, ensemble, *blended.shape[-2:])
            chunk_mean, chunk_var = ensemble_statistics(blended, dim=2)  # (z, T, x, y)
            chunk_voxels, chunk_intersections = member_mask_overlaps(blended)  # members reduced to counts here
            member_voxels += chunk_voxels
            member_intersections += chunk_intersections
            mean[:, rows, cols, chunk] = chunk_mean.permute(1, 2, 3, 0)
            variance[:, rows, cols, chunk] = chunk_var.permute(1, 2, 3, 0)
        _report(progress, SAMPLING_SHARE * chunk.stop / num_slices)
    largest = options.largest_component if options.largest_component is not None else cfg.sampling.largest_component
    if largest:
        for index, target in enumerate(resolved):
            if target.connected:
                mean[index] = keep_largest_component(mean[index])
    return prediction


_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def keep_largest_component(mean: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``mean`` with every voxel of ``mean > threshold`` outside its largest 26-connected component set to 0.

    Voxels at or below the threshold are untouched, so the soft edge of the kept component
    survives; the variance is not changed by the caller (it still shows where samples disagreed).
    """
    above = (mean > threshold).numpy()
    labels, count = ndimage.label(above, structure=_FULL_CONNECTIVITY)
    if count <= 1:
        return mean
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    drop = torch.from_numpy((labels != 0) & (labels != int(np.argmax(sizes))))
    return mean.masked_fill(drop, 0.0)


def _memory_budget(device: torch.device) -> int:
    """Bytes the denoiser's activations may take: half the free GPU memory, or a fixed 1 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    return CPU_ACTIVATION_BUDGET_BYTES


def _report(progress: Progress | None, fraction: float) -> None:
    if progress is not None:
        progress(fraction)


# --------------------------------------------------------------------------- back to the input grid
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


# --------------------------------------------------------------------------- outputs
def segment_volume(
    bundle: LoadedBundle | OnnxBundle,
    volume: Volume,
    targets: Sequence[str] | str,
    options: SegmentationOptions = SegmentationOptions(),
    progress: Progress | None = None,
    *,
    unserved: bool = False,
) -> Segmentation:
    """Segment a volume in memory: every target's mean and variance on the input grid (``unserved``:
    also targets the bundle does not serve, for evaluation)."""
    prediction = predict_model_grid(bundle, volume, targets, options, progress, unserved=unserved)
    means: dict[str, np.ndarray] = {}
    variances: dict[str, np.ndarray] = {}
    members: dict[str, MemberSummary] = {}
    for index, target in enumerate(prediction.targets):
        means[target.name] = prediction.mean_on_source(index)
        variances[target.name] = prediction.variance_on_source(index)
        summary = prediction.members(index)
        if summary is not None:
            members[target.name] = summary
        _report(progress, SAMPLING_SHARE + (1 - SAMPLING_SHARE) * (index + 1) / len(prediction.targets))
    _report(progress, 1.0)
    return Segmentation(targets=prediction.targets, mean=means, variance=variances, affine=volume.affine,
                        members=members)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI; ``.nii.gz`` goes through ISA-L's gzip (``isal``, about 5-20× faster than
    zlib at the same ratio, same file format) when it is installed, else through nibabel's zlib."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = Path(path)
    if path.name.endswith(".gz"):
        try:
            from isal import igzip
        except ImportError:
            igzip = None
        if igzip is not None:
            with igzip.open(path, "wb", compresslevel=1) as handle:
                img.to_file_map({"image": nib.FileHolder(filename=str(path), fileobj=handle)})
            return
    nib.save(img, str(path))


def _write_legend(targets: Sequence[Target], out_dir: Path) -> Path:
    legend = out_dir / "labels.json"
    legend.write_text(json.dumps({str(t.id): t.name for t in targets}, indent=2) + "\n")
    return legend


def write_segmentation(result: Segmentation, out_dir: Path) -> list[Path]:
    """Write the result files into ``out_dir`` and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for target in result.targets:
        for kind, maps in (("mean", result.mean), ("variance", result.variance)):
            path = out_dir / f"{target.name}_{kind}.nii.gz"
            _save_nifti(maps[target.name].astype(np.float32, copy=False), result.affine, path)
            written.append(path)
    labels_path = out_dir / "labels.nii.gz"
    _save_nifti(result.labels(), result.affine, labels_path)
    written.append(labels_path)
    written.append(_write_legend(result.targets, out_dir))
    return written


def write_prediction(
    prediction: ModelGridPrediction,
    out_dir: Path,
    progress: Progress | None = None,
    threshold: float = 0.5,
    *,
    hu: np.ndarray | None = None,
    statistics: bool = True,
    review: ReviewPolicy = ReviewPolicy(),
) -> list[Path]:
    """Resample and write one map at a time: the same files as ``write_segmentation(segment_volume(...))``
    with one full-resolution map (plus the label accumulator) in memory at a time.

    With ``statistics`` (the default) also ``statistics.json`` (:mod:`model.inference.statistics`), computed
    from each map while it is in memory; ``hu`` is the input volume's HU on its own grid (None
    leaves the HU keys null)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    affine = prediction.source_affine
    labels = _LabelAccumulator(prediction.source_shape)
    ensemble = None if prediction.member_voxels is None else int(prediction.member_voxels.shape[1])
    stats = StatisticsWriter(affine, prediction.source_shape, hu, policy=review, ensemble=ensemble) if statistics else None
    written: list[Path] = []
    # gzip is single-threaded and releases the GIL: compress files on writer threads while the
    # next map is resampled, with at most ``writers`` maps waiting to be written.
    writers = max(1, torch.get_num_threads())
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="nifti-writer") as pool:

        def save(array: np.ndarray, path: Path) -> None:
            while len(pending) >= writers:
                pending.popleft().result()
            pending.append(pool.submit(_save_nifti, array, affine, path))
            written.append(path)

        for index, target in enumerate(prediction.targets):
            mean = prediction.mean_on_source(index)
            labels.add(target.id, mean)
            save(mean, out_dir / f"{target.name}_mean.nii.gz")
            variance = prediction.variance_on_source(index)
            if stats is not None:
                stats.add(target, mean, variance, prediction.members(index))
            del mean
            save(variance, out_dir / f"{target.name}_variance.nii.gz")
            del variance
            # the last share is the label map, legend and statistics: 100 % only once all is written
            _report(progress, SAMPLING_SHARE + (1 - SAMPLING_SHARE) * (index + 1) / (len(prediction.targets) + 1))
        save(labels.result(threshold), out_dir / "labels.nii.gz")
        del labels
        while pending:
            pending.popleft().result()
    written.append(_write_legend(prediction.targets, out_dir))
    if stats is not None:
        written.append(stats.write(out_dir))
    _report(progress, 1.0)
    return written


def segment_file(
    bundle: LoadedBundle | OnnxBundle,
    input_path: Path,
    out_dir: Path,
    targets: Sequence[str] | str,
    *,
    ensemble: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    options: SegmentationOptions | None = None,
) -> list[Path]:
    """Segment a NIfTI file and write the results into ``out_dir`` (streamed: see :func:`write_prediction`),
    with ``statistics.json``.

    ``options``, when given, replaces ``ensemble``, ``steps`` and ``seed``.
    """
    options = options or SegmentationOptions(ensemble=ensemble, steps=steps, seed=seed)
    volume = load_nifti(input_path)
    prediction = predict_model_grid(bundle, volume, targets, options, progress)
    # The input's HU stay for the statistics (mean and sd of HU inside each mask): one input-sized
    # float32 array beside the one full-resolution map being written.
    return write_prediction(prediction, Path(out_dir), progress, hu=volume.data)
