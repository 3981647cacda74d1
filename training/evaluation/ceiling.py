"""Two ceilings on what the model can reach, reported in the model card beside the sampled Dice.

**Grid ceiling** (:func:`grid_ceiling`): the ground truth taken to the model grid exactly as
training takes it (nearest neighbour, ``training.data.prepare_case``'s label mapping), then back
to the input grid exactly as inference returns a mean mask (linear, > 0.5). A perfect model
scores this; the rest is what the grid's spacing costs.

**Mask auto-encoder ceiling**: Dice of ground truth sent through encode → decode.

The denoiser predicts a mask *latent*; the best it can ever do is the latent of the true
mask, so the Dice of ``decode(encode(truth))`` on held-out data bounds what the full model
can reach at this grid and latent size. The model card reports it beside the sampled Dice,
so a missed floor can be blamed on the right stage.

Masks are taken on the model grid, preprocessed exactly as for training
(``training.data.prepare_case``), slice by slice along the axial axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.bundle.loaded import LoadedBundle
from model.bundle.config import PreprocessConfig
from model.inference.preprocessing import Volume, to_model_grid
from model.targets.vocabulary import Vocabulary
from training.data import prepare_case, read_dataset, target_masks

RoundTrip = Callable[[torch.Tensor], torch.Tensor]  # (B, 1, H, W) {0,1} -> (B, 1, H, W) probabilities


@dataclass(frozen=True)
class CeilingResult:
    target: str
    cases: int
    dice_mean: float
    dice_min: float


def _pad_to(mask: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    x, y = mask.shape[:2]
    px, py = (-x) % multiple, (-y) % multiple
    return np.pad(mask, ((0, px), (0, py), (0, 0))), (x, y)


def round_trip_dice(mask: np.ndarray, round_trip: RoundTrip, *, multiple: int = 8, batch: int = 64) -> float:
    """3-D Dice between ``mask`` (X, Y, Z) and its slice-wise round trip thresholded at 0.5.

    Only slices with foreground within two slices are sent through the auto-encoder; the
    rest decode to background by construction of the comparison (both empty there).
    """
    mask = mask.astype(bool)
    truth_total = int(mask.sum())
    if truth_total == 0:
        raise ValueError("round_trip_dice needs a non-empty mask")
    padded, (x, y) = _pad_to(mask.astype(np.float32), multiple)
    rows = np.flatnonzero(mask.any(axis=(0, 1)))
    z_slices = np.arange(max(rows.min() - 2, 0), min(rows.max() + 3, mask.shape[2]))
    overlap = predicted = 0
    for start in range(0, len(z_slices), batch):
        chunk = z_slices[start : start + batch]
        slices = torch.from_numpy(np.ascontiguousarray(padded[:, :, chunk].transpose(2, 0, 1)))[:, None]
        with torch.no_grad():
            recon = round_trip(slices)[:, 0, :x, :y].numpy() > 0.5
        truth = mask[:, :, chunk].transpose(2, 0, 1)
        overlap += int(np.logical_and(recon, truth).sum())
        predicted += int(recon.sum())
    return 2.0 * overlap / (truth_total + predicted)


def bundle_round_trip(bundle: LoadedBundle) -> RoundTrip:
    """The bundle's mask auto-encoder as a round trip (probabilities), on the bundle's device."""
    ae = bundle.networks.mask_ae

    def run(masks: torch.Tensor) -> torch.Tensor:
        masks = masks.to(bundle.device)
        return torch.sigmoid(ae.decode(ae.encode(masks))).float().cpu()

    return run


def mask_ae_ceiling(
    bundle: LoadedBundle,
    data: str | Path,
    *,
    targets: Sequence[str] | None = None,
    max_cases: int | None = None,
    cache_dir: Path | None = None,
) -> list[CeilingResult]:
    """Per target: mean and worst round-trip Dice over the cases where the target is present."""
    vocabulary = bundle.vocabulary
    source = read_dataset(data, vocabulary)
    wanted = set(bundle.trained_targets) & set(source.label_map.annotated)
    if targets:
        wanted &= {t.name for t in vocabulary.resolve(list(targets))}
    round_trip = bundle_round_trip(bundle)
    scores: dict[str, list[float]] = {}
    for files in source.cases[:max_cases] if max_cases else source.cases:
        case = prepare_case(files, source.label_map, vocabulary, bundle.config.preprocess, cache_dir)
        for target_id in case.present():
            name = vocabulary.by_id(target_id).name
            if name in wanted:
                scores.setdefault(name, []).append(round_trip_dice(case.mask(target_id), round_trip))
    order = [t for t in bundle.trained_targets if t in scores]
    return [CeilingResult(t, len(scores[t]), float(np.mean(scores[t])), float(np.min(scores[t]))) for t in order]


def grid_ceiling(
    config: PreprocessConfig,
    data: str | Path,
    vocabulary: Vocabulary,
    *,
    targets: Sequence[str] | None = None,
    max_cases: int | None = None,
) -> list[CeilingResult]:
    """Per target: mean and worst Dice, on the input grid, of the truth after the round trip to the
    model grid (as training sees it) and back (as inference returns it), over the cases with the target."""
    import nibabel as nib

    from model.inference.resampling import resample_to_source
    from training.evaluation.evaluate import dice_score

    source = read_dataset(data, vocabulary)
    wanted = set(source.label_map.annotated)
    if targets:
        wanted &= {t.name for t in vocabulary.resolve(list(targets))}
    scores: dict[str, list[float]] = {}
    for files in source.cases[:max_cases] if max_cases else source.cases:
        image = nib.load(str(files.image))
        affine = np.asarray(image.affine, dtype=np.float64)
        label = np.asarray(nib.load(str(files.label)).dataobj).astype(np.int32).reshape(image.shape[:3])
        truths = target_masks(label, affine, source.label_map, vocabulary)
        grid = to_model_grid(Volume(label.astype(np.float32), affine), config, mode="nearest")
        on_grid = target_masks(np.rint(grid.hu.numpy()).astype(np.int32), grid.affine, source.label_map, vocabulary)
        for name in sorted(wanted):
            truth = truths.get(name)
            if truth is None or not truth.any():
                continue
            back = resample_to_source(torch.from_numpy(on_grid[name].astype(np.float32)), grid.affine, affine, label.shape)
            scores.setdefault(name, []).append(dice_score(back > 0.5, truth))
    order = [n for n in vocabulary.names() if n in scores]
    return [CeilingResult(t, len(scores[t]), float(np.mean(scores[t])), float(np.min(scores[t]))) for t in order]
