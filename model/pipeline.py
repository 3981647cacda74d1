"""Volume in, per-target mean and variance masks out (paper §3.1 inference).

1. read the NIfTI and bring it to the model grid (RAS, bundle spacing), scale intensities;
2. MONAI sliding-window inference over axial slices with the bundle's 2-D patch size; each
   window is encoded once, and every (target, ensemble member) is sampled in latent space
   and decoded; windows with no body voxel are skipped (probability 0, variance 0);
3. blend windows, take the mean and variance over the ensemble, resample both back onto the
   input grid (exact shape and affine), and write ``{target}_mean.nii.gz``,
   ``{target}_variance.nii.gz``, ``labels.nii.gz`` and ``labels.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference

from model.bundle import LoadedBundle
from model.ensemble import WindowKey, ensemble_statistics, sample_window_probabilities
from model.errors import InputError
from model.preprocessing import (
    Volume,
    axial_slices,
    body_mask,
    from_axial_slices,
    load_nifti,
    scale_intensity,
    to_model_grid,
    to_source_grid,
)
from model.vocabulary import Target

log = logging.getLogger(__name__)

Progress = Callable[[float], None]


@dataclass(frozen=True)
class SegmentationOptions:
    ensemble: int = 5
    steps: int = 10
    seed: int = 0
    sampler: str | None = None  # None: the bundle's default
    slices_per_chunk: int = 8

    def check(self) -> None:
        if not 1 <= self.ensemble <= 64:
            raise InputError(f"ensemble must be in 1..64, got {self.ensemble}")
        if not 1 <= self.steps <= 1000:
            raise InputError(f"steps must be in 1..1000, got {self.steps}")


@dataclass(frozen=True)
class Segmentation:
    """Results on the input's voxel grid, keyed by target name."""

    targets: tuple[Target, ...]
    mean: dict[str, np.ndarray]  # float32 in [0, 1]
    variance: dict[str, np.ndarray]  # float32 >= 0
    affine: np.ndarray

    def labels(self, threshold: float = 0.5) -> np.ndarray:
        """uint8 label map: the vocabulary id of the most probable target where its mean > threshold."""
        stack = np.stack([self.mean[t.name] for t in self.targets])
        best = stack.argmax(axis=0)
        ids = np.asarray([t.id for t in self.targets], dtype=np.uint8)
        return np.where(stack.max(axis=0) > threshold, ids[best], 0).astype(np.uint8)


def resolve_targets(bundle: LoadedBundle, targets: Sequence[str] | str) -> tuple[Target, ...]:
    """Vocabulary targets the bundle was trained for (raises ValueError naming the problem)."""
    resolved = bundle.vocabulary.resolve(targets)
    untrained = [t.name for t in resolved if t.name not in bundle.trained_targets]
    if untrained:
        raise InputError(
            f"bundle {bundle.name!r} was not trained for {', '.join(untrained)}; "
            f"it knows: {', '.join(bundle.trained_targets)}"
        )
    return resolved


def segment_volume(
    bundle: LoadedBundle,
    volume: Volume,
    targets: Sequence[str] | str,
    options: SegmentationOptions = SegmentationOptions(),
    progress: Progress | None = None,
) -> Segmentation:
    options.check()
    resolved = resolve_targets(bundle, targets)
    cfg = bundle.config
    pre = cfg.preprocess
    grid = to_model_grid(volume, pre)
    image_slices = axial_slices(scale_intensity(grid.hu, pre))  # (Z, 1, X, Y)
    body_slices = axial_slices(body_mask(grid.hu, pre).float())
    num_slices = image_slices.shape[0]
    process = bundle.process(options.steps)
    sampler = options.sampler or cfg.sampling.sampler
    target_ids = [t.id for t in resolved]
    num_targets, ensemble = len(resolved), options.ensemble
    means: list[torch.Tensor] = []
    variances: list[torch.Tensor] = []

    for chunk_start in range(0, num_slices, options.slices_per_chunk):
        chunk = slice(chunk_start, min(chunk_start + options.slices_per_chunk, num_slices))
        inputs = torch.cat([image_slices[chunk], body_slices[chunk]], dim=1)  # (z, 2, X, Y)

        def predictor(windows: torch.Tensor, coords: list[list[slice]], offset: int = chunk_start) -> torch.Tensor:
            n, _, h, w = windows.shape
            out = torch.zeros((n, num_targets * ensemble, h, w), dtype=torch.float32)
            has_body = windows[:, 1].flatten(1).amax(dim=1) > 0
            keep = torch.nonzero(has_body).flatten().tolist()
            if keep:
                keys = [WindowKey(offset + coords[i][0].start, coords[i][2].start, coords[i][3].start) for i in keep]
                probs = sample_window_probabilities(
                    bundle, process, windows[keep, :1], keys, target_ids,
                    ensemble=ensemble, seed=options.seed, sampler=sampler,
                    eta=cfg.sampling.eta, max_batch=cfg.sampling.max_batch,
                )
                out[keep] = probs.view(len(keep), num_targets * ensemble, h, w)
            return out

        blended = sliding_window_inference(
            inputs,
            roi_size=pre.patch_size,
            sw_batch_size=max(1, cfg.sampling.max_batch // max(1, num_targets * ensemble)),
            predictor=predictor,
            overlap=cfg.sampling.overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=0.0,
            with_coord=True,
        )
        blended = torch.as_tensor(blended).view(-1, num_targets, ensemble, *blended.shape[-2:])
        mean, var = ensemble_statistics(blended, dim=2)  # (z, T, X, Y)
        means.append(mean)
        variances.append(var)
        if progress is not None:
            progress(0.95 * chunk.stop / num_slices)

    mean_grid = from_axial_slices(torch.cat(means))  # (T, X, Y, Z)
    var_grid = from_axial_slices(torch.cat(variances))
    mean_src = to_source_grid(mean_grid, grid.affine, volume.affine, volume.shape).clamp_(0.0, 1.0)
    var_src = to_source_grid(var_grid, grid.affine, volume.affine, volume.shape).clamp_(min=0.0)
    if progress is not None:
        progress(1.0)
    return Segmentation(
        targets=resolved,
        mean={t.name: mean_src[i].numpy() for i, t in enumerate(resolved)},
        variance={t.name: var_src[i].numpy() for i, t in enumerate(resolved)},
        affine=volume.affine,
    )


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_segmentation(result: Segmentation, out_dir: Path) -> list[Path]:
    """Write the result files into ``out_dir`` and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for target in result.targets:
        for kind, maps in (("mean", result.mean), ("variance", result.variance)):
            path = out_dir / f"{target.name}_{kind}.nii.gz"
            _save_nifti(maps[target.name].astype(np.float32), result.affine, path)
            written.append(path)
    labels_path = out_dir / "labels.nii.gz"
    _save_nifti(result.labels(), result.affine, labels_path)
    written.append(labels_path)
    legend = out_dir / "labels.json"
    legend.write_text(json.dumps({str(t.id): t.name for t in result.targets}, indent=2) + "\n")
    written.append(legend)
    return written


def segment_file(
    bundle: LoadedBundle,
    input_path: Path,
    out_dir: Path,
    targets: Sequence[str] | str,
    *,
    ensemble: int = 5,
    steps: int = 10,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[Path]:
    """Segment a NIfTI file and write the results into ``out_dir``."""
    volume = load_nifti(input_path)
    result = segment_volume(
        bundle, volume, targets, SegmentationOptions(ensemble=ensemble, steps=steps, seed=seed), progress
    )
    return write_segmentation(result, Path(out_dir))
