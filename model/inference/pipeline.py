"""Volume in, per-target mean and variance masks out (paper §3.1 inference).

1. read the NIfTI and bring it to the model grid (RAS, bundle spacing), scale intensities;
2. crop to the patient (the largest body component's in-plane box, grown to at least one
   window; the scanner table and air around it are left out), then MONAI sliding-window
   inference over axial slices with the bundle's 2-D patch size; each window is encoded
   once, and every (window, target, ensemble member) is sampled in latent space in large
   batches and decoded; windows and slices with no body voxel are skipped (probability 0,
   variance 0);
3. blend windows, take the mean and variance over the ensemble, resample each map back onto
   the input grid (exact shape and affine: :mod:`model.inference.resampling`) one target at a
   time, and write ``{target}_mean.nii.gz``, ``{target}_variance.nii.gz``, ``labels.nii.gz``,
   ``labels.json`` and ``statistics.json`` (:mod:`model.inference.writing`).

This module is steps 1-2, tensor in and probabilities out (:func:`predict_model_grid`), plus
the two entries that add step 3. Memory: everything up to step 3 lives on the (small) model
grid. :func:`segment_file` streams step 3, so only one full-resolution map plus the label
accumulator exist at a time and peak memory does not grow with the number of targets.
:func:`segment_volume` returns every map in memory (for callers that want arrays).

``bundle`` is a :class:`model.bundle.loaded.LoadedBundle` (torch) or any object with the same
sampling surface, such as :class:`model.bundle.onnx_backend.OnnxBundle`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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
    with_context,
)
from model.inference.progress import SAMPLING_SHARE, Progress, report
from model.inference.resampling import resample_to_source
from model.inference.statistics import MemberSummary
from model.inference.writing import LabelAccumulator, write_prediction
from model.targets.vocabulary import Target

if TYPE_CHECKING:
    from model.bundle.onnx_backend import OnnxBundle

log = logging.getLogger(__name__)

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
    exclusive: bool | None = None  # None: the bundle's default (sampling.exclusive)
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
        labels = LabelAccumulator(next(iter(self.mean.values())).shape)
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

    def on_source(self, progress: Progress | None = None) -> Segmentation:
        """Every target's mean and variance on the input grid, in memory (progress from
        ``SAMPLING_SHARE`` to 1)."""
        means: dict[str, np.ndarray] = {}
        variances: dict[str, np.ndarray] = {}
        members: dict[str, MemberSummary] = {}
        for index, target in enumerate(self.targets):
            means[target.name] = self.mean_on_source(index)
            variances[target.name] = self.variance_on_source(index)
            summary = self.members(index)
            if summary is not None:
                members[target.name] = summary
            report(progress, SAMPLING_SHARE + (1 - SAMPLING_SHARE) * (index + 1) / len(self.targets))
        report(progress, 1.0)
        return Segmentation(targets=self.targets, mean=means, variance=variances, affine=self.source_affine,
                            members=members)


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
        report(progress, SAMPLING_SHARE)
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
        report(progress, SAMPLING_SHARE * chunk.stop / num_slices)
    exclusive = options.exclusive if options.exclusive is not None else cfg.sampling.exclusive
    if exclusive:
        resolve_overlaps(mean, resolved)
    largest = options.largest_component if options.largest_component is not None else cfg.sampling.largest_component
    if largest:
        for index, target in enumerate(resolved):
            if target.connected:
                mean[index] = keep_largest_component(mean[index])
    return prediction


_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def resolve_overlaps(mean: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Make the one-piece targets of ``mean`` (T, ...) exclusive, in place, and return it.

    One-piece organs and main vessels (``Target.connected``) never share a voxel, yet each target
    is an independent prompt, so two of them may both claim one. Where they compete, the most
    probable one keeps its probability and every other one is capped at 1 minus it (exclusive
    events' probabilities sum to at most 1): a loser's mean drops below 0.5 wherever the winner's is
    above it, and voxels no target claims stay as they were. Ties go to the earlier target
    (``argmax``). Lesions and structures that may overlap an organ (hepatic vessels, the portal
    vein) are never capped. The variance is not changed (it still shows where samples disagreed).
    """
    competing = [index for index, target in enumerate(targets) if target.connected]
    if len(competing) < 2:
        return mean
    claims = mean[competing]
    winner_mean, winner = claims.max(dim=0)
    for rank, index in enumerate(competing):
        lost = winner != rank
        mean[index] = torch.where(lost, torch.minimum(mean[index], 1.0 - winner_mean), mean[index])
    return mean


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


# --------------------------------------------------------------------------- entries
def segment_volume(bundle: LoadedBundle | OnnxBundle, volume: Volume, targets: Sequence[str] | str,
                   options: SegmentationOptions = SegmentationOptions(), progress: Progress | None = None, *,
                   unserved: bool = False) -> Segmentation:
    """Segment a volume in memory: :func:`predict_model_grid` (same arguments), then every map on the
    input grid (:meth:`ModelGridPrediction.on_source`)."""
    return predict_model_grid(bundle, volume, targets, options, progress, unserved=unserved).on_source(progress)


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
