"""Evaluate a bundle on a labelled dataset folder: per-target Dice, HD95 and variance AUROC.

The real inference pipeline (``model.inference.pipeline.segment_volume``) runs on each case's NIfTI;
ground truth comes from the same reader and label mapping as training
(``training.data.read_dataset`` + ``target_masks``), on the input's own voxel grid.

Metric conventions (also written into every report):

* **Prediction** = ensemble mean > 0.5.
* **Dice** (MONAI ``compute_dice``, ``ignore_empty=False``): both empty → 1, truth empty but
  prediction not → 0. The per-target mean and sd are taken only over cases whose truth is
  *non-empty*; cases where the target is absent are counted separately (``absent_cases``),
  with the number of those where something was predicted anyway (``false_positive_cases``).
* **HD95** in mm (MONAI ``compute_hausdorff_distance``, percentile 95, with the voxel
  spacing): undefined (None, with a note) when the prediction or the truth is empty.
* **Variance AUROC**: how well the ensemble variance flags misclassified voxels
  ((mean > 0.5) != truth), as the rank-based (Mann-Whitney) AUROC with ties counted as
  half. Restricted to voxels within ``margin_mm`` (default 10 mm) of the union of truth and
  prediction, so the huge easy background does not inflate it. None when that region has
  no error or nothing but errors.
* **Calibration** of the mean probability, per target, pooled over every voxel of every case:
  expected calibration error over 15 equal-width bins (ECE = Σ_b n_b/N·|mean p_b − truth rate_b|)
  and the Brier score (mean (p − truth)²), both over the whole volume (``ece``, ``brier``: the easy
  background dominates them) and within the variance-AUROC region (``ece_region``,
  ``brier_region``: near the structure, where calibration matters). ``reliability.png`` draws the
  region's bins per target.
* **Review scores** (no ground truth needed, :mod:`model.inference.statistics`): the members' mean pairwise
  Dice, the share of the mask's voxels with high variance, the ensemble volume CV, and whether
  ``statistics.json`` would flag the target (``needs_review``), recorded per case and target so the
  review flag can be chosen by how well they predict Dice (``training.evaluation.review_flag``).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from model.bundle.loaded import LoadedBundle
from model.bundle.manifest import resolve_sampling
from model.inference.pipeline import SegmentationOptions, segment_volume
from model.inference.statistics import MemberSummary, ReviewPolicy, body_centre_x, target_statistics
from model.inference.preprocessing import load_nifti
from training.data import read_dataset, select_cases, target_masks

log = logging.getLogger(__name__)

DEFAULT_MARGIN_MM = 10.0
CALIBRATION_BINS = 15
METHOD_NOTES = (
    "prediction = ensemble mean > 0.5",
    "Dice: MONAI compute_dice (ignore_empty=False); mean/sd over cases whose truth is non-empty; "
    "absent_cases = cases without the target, false_positive_cases = those with a non-empty prediction",
    "HD95: MONAI compute_hausdorff_distance, percentile 95, in mm using the voxel spacing; "
    "undefined (null) when the prediction or the truth is empty",
    f"variance AUROC: rank-based AUROC (ties = 1/2) of the ensemble variance for misclassified voxels, "
    f"within {DEFAULT_MARGIN_MM:g} mm of the union of truth and prediction; mean over cases where defined",
    f"calibration of the mean probability, pooled over cases: ECE ({CALIBRATION_BINS} equal-width bins) and Brier "
    f"score over the whole volume and within the variance-AUROC region",
)


# --------------------------------------------------------------------------- metrics on arrays
def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays of the same shape (both empty → 1, truth empty only → 0)."""
    from monai.metrics import compute_dice

    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
    union = pred | truth
    box = _bounding_box(union, [0] * union.ndim) if union.any() else tuple(slice(0, 1) for _ in union.shape)
    # Cropping to the union's bounding box changes no overlap count and saves time on big volumes.
    p = torch.from_numpy(np.ascontiguousarray(pred[box], dtype=bool))[None, None].float()
    t = torch.from_numpy(np.ascontiguousarray(truth[box], dtype=bool))[None, None].float()
    return float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])


def _bounding_box(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    coords = np.argwhere(mask)
    lo = np.maximum(coords.min(axis=0) - np.asarray(margin), 0)
    hi = np.minimum(coords.max(axis=0) + np.asarray(margin) + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float | None:
    """95th-percentile symmetric Hausdorff distance in mm; None when either mask is empty.

    Computed on the bounding box of the union plus one voxel (surface distances do not change).
    """
    from monai.metrics import compute_hausdorff_distance

    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
    if not pred.any() or not truth.any():
        return None
    box = _bounding_box(pred | truth, [1] * pred.ndim)
    p = torch.from_numpy(np.ascontiguousarray(pred[box], dtype=bool))[None, None].float()
    t = torch.from_numpy(np.ascontiguousarray(truth[box], dtype=bool))[None, None].float()
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        value = float(
            compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=[float(s) for s in spacing])[0, 0]
        )
    return value if math.isfinite(value) else None


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Rank-based AUROC (Mann-Whitney U / (n_pos·n_neg)) with average ranks for ties.

    ``labels`` are booleans (True = positive). None when either class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.size} vs {labels.size}")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: ranks before it + (count + 1) / 2.
    before = np.concatenate(([0], np.cumsum(counts)[:-1]))
    average_rank = before + (counts + 1) / 2.0
    rank_sum = float(average_rank[inverse][labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def error_region(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` of the union of prediction and truth (empty if both are empty)."""
    union = pred | truth
    region = np.zeros(union.shape, dtype=bool)
    if not union.any():
        return region
    margin_vox = [int(math.ceil(margin_mm / s)) + 1 for s in spacing]
    box = _bounding_box(union, margin_vox)
    distance = ndimage.distance_transform_edt(~union[box], sampling=[float(s) for s in spacing])
    region[box] = distance <= margin_mm
    return region


def variance_auroc(
    mean: np.ndarray, variance: np.ndarray, truth: np.ndarray, spacing: Sequence[float], margin_mm: float = DEFAULT_MARGIN_MM
) -> float | None:
    """AUROC of ``variance`` for voxels where (mean > 0.5) != truth, inside :func:`error_region`."""
    pred = mean > 0.5
    region = error_region(pred, truth, spacing, margin_mm)
    if not region.any():
        return None
    return auroc(variance[region], (pred != truth)[region])


def calibration_bins(probability: np.ndarray, truth: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Per-bin voxel count, probability sum and truth sum over ``bins`` equal-width bins of [0, 1],
    and the sum of squared errors: additive over cases (:func:`calibration_metrics`)."""
    p = np.asarray(probability, np.float64).ravel()
    t = np.asarray(truth, bool).ravel()
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    return {
        "count": np.bincount(index, minlength=bins).astype(int).tolist(),
        "prob_sum": np.bincount(index, weights=p, minlength=bins).tolist(),
        "truth_sum": np.bincount(index, weights=t.astype(np.float64), minlength=bins).tolist(),
        "squared_error_sum": float(np.square(p - t).sum()),
    }


def merge_bins(parts: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Sum of several :func:`calibration_bins` results (None when there are none)."""
    if not parts:
        return None
    merged = {key: np.sum([np.asarray(p[key], np.float64) for p in parts], axis=0) for key in ("count", "prob_sum", "truth_sum")}
    return {**{k: v.tolist() for k, v in merged.items()}, "squared_error_sum": float(sum(p["squared_error_sum"] for p in parts))}


def calibration_metrics(bins: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(ECE, Brier) from pooled bins; (None, None) when no voxel was counted."""
    if bins is None:
        return None, None
    count = np.asarray(bins["count"], np.float64)
    total = count.sum()
    if total == 0:
        return None, None
    filled = count > 0
    gap = np.abs(np.asarray(bins["prob_sum"])[filled] - np.asarray(bins["truth_sum"])[filled]) / count[filled]
    return float((count[filled] / total * gap).sum()), float(bins["squared_error_sum"] / total)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class CaseTargetResult:
    case: str
    target: str
    dice: float
    hd95_mm: float | None
    auroc: float | None
    truth_voxels: int
    pred_voxels: int
    note: str | None = None
    # Review scores from the ensemble alone (model.inference.statistics); None in reports written before them.
    pred_volume_ml: float | None = None
    pairwise_dice: float | None = None
    high_variance_share: float | None = None
    volume_cv: float | None = None
    touches_edge: bool | None = None
    needs_review: bool | None = None
    review_reason: str | None = None
    # Calibration bins of the mean probability (calibration_bins): whole volume and AUROC region.
    calibration_all: dict[str, Any] | None = None
    calibration_region: dict[str, Any] | None = None


@dataclass(frozen=True)
class TargetSummary:
    target: str
    cases: int  # cases whose truth is non-empty (Dice and HD95 are over these)
    dice_mean: float | None
    dice_sd: float | None
    hd95_mean_mm: float | None
    hd95_sd_mm: float | None
    hd95_cases: int
    auroc_mean: float | None
    auroc_cases: int
    absent_cases: int
    false_positive_cases: int
    ece: float | None = None
    brier: float | None = None
    ece_region: float | None = None
    brier_region: float | None = None


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarise(results: Sequence[CaseTargetResult], targets: Sequence[str]) -> tuple[TargetSummary, ...]:
    """Per-target aggregates, in the order of ``targets``."""
    out = []
    for target in targets:
        rows = [r for r in results if r.target == target]
        present = [r for r in rows if r.truth_voxels > 0]
        dice_mean, dice_sd = _mean_sd([r.dice for r in present])
        hd = [r.hd95_mm for r in present if r.hd95_mm is not None]
        hd_mean, hd_sd = _mean_sd(hd)
        au = [r.auroc for r in rows if r.auroc is not None]
        ece, brier = calibration_metrics(merge_bins([r.calibration_all for r in rows if r.calibration_all]))
        ece_region, brier_region = calibration_metrics(
            merge_bins([r.calibration_region for r in rows if r.calibration_region]))
        out.append(
            TargetSummary(
                target=target,
                cases=len(present),
                dice_mean=dice_mean,
                dice_sd=dice_sd,
                hd95_mean_mm=hd_mean,
                hd95_sd_mm=hd_sd,
                hd95_cases=len(hd),
                auroc_mean=float(np.mean(au)) if au else None,
                auroc_cases=len(au),
                absent_cases=len(rows) - len(present),
                false_positive_cases=sum(1 for r in rows if r.truth_voxels == 0 and r.pred_voxels > 0),
                ece=ece,
                brier=brier,
                ece_region=ece_region,
                brier_region=brier_region,
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class EvaluationReport:
    bundle: str
    bundle_name: str
    data: str
    dataset: str
    steps: int
    ensemble: int
    seed: int
    device: str
    seconds: float
    cases: tuple[str, ...]
    results: tuple[CaseTargetResult, ...]
    summary: tuple[TargetSummary, ...]
    notes: tuple[str, ...] = field(default=METHOD_NOTES)
    sampler: str | None = None  # None only in reports written before the sampler was recorded
    largest_component: bool | None = None  # None only in reports written before it was recorded
    exclusive: bool | None = None  # None only in reports written before it was recorded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationReport:
        return cls(
            **{
                **data,
                "cases": tuple(data["cases"]),
                "results": tuple(CaseTargetResult(**r) for r in data["results"]),
                "summary": tuple(TargetSummary(**s) for s in data["summary"]),
                "notes": tuple(data.get("notes", METHOD_NOTES)),
            }
        )

    def summary_for(self, target: str) -> TargetSummary | None:
        return next((s for s in self.summary if s.target == target), None)

    def to_markdown(self) -> str:
        lines = [
            f"Bundle `{self.bundle_name}` on `{self.dataset}` ({len(self.cases)} cases; {self.sampler or 'default'} "
            f"sampler, steps {self.steps}, "
            f"ensemble {self.ensemble}, seed {self.seed}, {self.device}, {self.seconds:.0f} s)",
            "",
            markdown_table(self.summary),
            "",
            *(f"- {note}" for note in self.notes),
        ]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int, sd: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if sd is None else f"{value:.{digits}f} ± {sd:.{digits}f}"


def markdown_table(summary: Sequence[TargetSummary]) -> str:
    rows = [
        "| target | cases | Dice mean ± sd | HD95 mm (n) | variance AUROC (n) | absent (false +) "
        "| ECE near / all | Brier near / all |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        rows.append(
            f"| {s.target} | {s.cases} | {_fmt(s.dice_mean, 3, s.dice_sd)} | "
            f"{_fmt(s.hd95_mean_mm, 1, s.hd95_sd_mm)} ({s.hd95_cases}) | {_fmt(s.auroc_mean, 3)} ({s.auroc_cases}) | "
            f"{s.absent_cases} ({s.false_positive_cases}) | {_fmt(s.ece_region, 3)} / {_fmt(s.ece, 4)} | "
            f"{_fmt(s.brier_region, 3)} / {_fmt(s.brier, 4)} |"
        )
    return "\n".join(rows)


# --------------------------------------------------------------------------- running a bundle
def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis (column norms of the affine)."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def evaluate_case_targets(
    case: str,
    means: dict[str, np.ndarray],
    variances: dict[str, np.ndarray],
    truths: dict[str, np.ndarray],
    spacing: Sequence[float],
    margin_mm: float = DEFAULT_MARGIN_MM,
    *,
    members: dict[str, MemberSummary] | None = None,
    affine: np.ndarray | None = None,
    hu: np.ndarray | None = None,
    review: ReviewPolicy = ReviewPolicy(),
) -> list[CaseTargetResult]:
    """Metrics for each target in ``means`` against ``truths`` (same grid); with ``affine`` also the
    review scores of :mod:`model.inference.statistics` (``members``: the ensemble's per-member counts)."""
    results = []
    body_x = None if hu is None or affine is None else body_centre_x(hu, affine)  # once per case
    for target, mean in means.items():
        truth = truths[target].astype(bool)
        pred = mean > 0.5
        review_fields: dict[str, Any] = {}
        if affine is not None:
            entry = target_statistics(target, mean, variances[target], hu, affine, (members or {}).get(target), review,
                                      body_x)
            quality = entry["quality"]
            review_fields = {
                "pred_volume_ml": entry["volume_ml"], "pairwise_dice": quality["pairwise_dice"],
                "high_variance_share": quality["high_variance_share"], "volume_cv": quality["volume_cv"],
                "touches_edge": entry["touches_edge"], "needs_review": entry["needs_review"],
                "review_reason": entry["review_reason"],
            }
        region = error_region(pred, truth, spacing, margin_mm)
        hd = hd95_mm(pred, truth, spacing)
        notes = []
        if not truth.any():
            notes.append("target absent from the truth")
        if not pred.any():
            notes.append("empty prediction")
        if hd is None:
            notes.append("HD95 undefined")
        results.append(
            CaseTargetResult(
                case=case,
                target=target,
                dice=dice_score(pred, truth),
                hd95_mm=hd,
                auroc=variance_auroc(mean, variances[target], truth, spacing, margin_mm),
                truth_voxels=int(truth.sum()),
                pred_voxels=int(pred.sum()),
                note="; ".join(notes) or None,
                **review_fields,
                calibration_all=calibration_bins(mean, truth),
                calibration_region=calibration_bins(mean[region], truth[region]) if region.any() else None,
            )
        )
    return results


def evaluation_targets(bundle: LoadedBundle, annotated: Sequence[str], requested: Sequence[str] | None) -> tuple[str, ...]:
    """Targets both annotated by the data and trained in the bundle (∩ requested), in vocabulary order."""
    vocabulary = bundle.vocabulary
    names = set(annotated) & set(bundle.trained_targets)
    if requested:
        wanted = {t.name for t in vocabulary.resolve(list(requested))}
        names &= wanted
    return tuple(sorted(names, key=lambda n: vocabulary.get(n).id))


def evaluate_dataset(
    bundle: LoadedBundle,
    data: str | Path,
    *,
    steps: int | None = None,
    ensemble: int | None = None,
    seed: int = 0,
    sampler: str | None = None,
    largest_component: bool | None = None,
    exclusive: bool | None = None,
    targets: Sequence[str] | None = None,
    max_cases: int | None = None,
    cases: Sequence[str] | None = None,
    targets_per_pass: int = 4,
    margin_mm: float = DEFAULT_MARGIN_MM,
    on_case: Callable[[int, int, str, float], None] | None = None,
) -> EvaluationReport:
    """Segment every case of the dataset at ``data`` and score the annotated targets.

    ``targets_per_pass`` bounds memory: mean and variance of that many targets are held on the
    input grid at once (the image is re-encoded per pass, which is cheap). With ``exclusive`` on
    (the request's or the bundle's), the targets compete for voxels, so every target of a case
    goes in one pass, as in a request that names them all.
    ``on_case(index, total, case_name, seconds)`` is called after each case.
    """
    vocabulary = bundle.vocabulary
    source = read_dataset(data, vocabulary)
    if cases:
        source = select_cases([source], include=cases)[0]
    names = evaluation_targets(bundle, sorted(source.label_map.annotated), targets)
    if not names:
        raise ValueError(
            f"nothing to evaluate: dataset {source.name!r} annotates {sorted(source.label_map.annotated)}, "
            f"bundle {bundle.name!r} was trained for {list(bundle.trained_targets)}"
            + (f", requested {list(targets)}" if targets else "")
        )
    ensemble, steps = resolve_sampling(bundle.config.sampling, ensemble, steps)  # the bundle's unless given
    options = SegmentationOptions(
        ensemble=ensemble,
        steps=steps,
        seed=seed,
        sampler=sampler,
        largest_component=largest_component,
        exclusive=exclusive,
    )
    options.check()
    exclusive = bundle.config.sampling.exclusive if exclusive is None else exclusive
    if exclusive:
        targets_per_pass = len(names)
    files = source.cases[:max_cases] if max_cases else source.cases
    started = time.time()
    results: list[CaseTargetResult] = []
    case_names: list[str] = []
    for index, case_files in enumerate(files):
        case_started = time.time()
        case = case_files.image.name.removesuffix(".gz").removesuffix(".nii")
        volume = load_nifti(case_files.image)
        label = np.asarray(nib.load(str(case_files.label)).dataobj).astype(np.int32).reshape(volume.shape)
        truths = target_masks(label, volume.affine, source.label_map, vocabulary)
        spacing = voxel_spacing(volume.affine)
        for start in range(0, len(names), max(1, targets_per_pass)):
            group = list(names[start : start + max(1, targets_per_pass)])
            seg = segment_volume(bundle, volume, group, options, unserved=True)  # scored whether served or not
            results.extend(evaluate_case_targets(case, seg.mean, seg.variance, truths, spacing, margin_mm,
                                                 members=seg.members, affine=volume.affine, hu=volume.data))
            del seg
        case_names.append(case)
        seconds = time.time() - case_started
        log.info("evaluated %s (%d/%d) in %.0f s", case, index + 1, len(files), seconds)
        if on_case is not None:
            on_case(index, len(files), case, seconds)
    return EvaluationReport(
        bundle=str(bundle.path),
        bundle_name=bundle.name,
        data=str(Path(data)),
        dataset=source.name,
        steps=options.steps,
        ensemble=options.ensemble,
        seed=seed,
        device=str(bundle.device),
        seconds=time.time() - started,
        cases=tuple(case_names),
        results=tuple(results),
        summary=summarise(results, names),
        sampler=str(options.sampler or bundle.config.sampling.sampler.value),
        largest_component=bundle.config.sampling.largest_component if largest_component is None else largest_component,
        exclusive=exclusive,
    )


def write_report(report: EvaluationReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``evaluation.json``, ``evaluation.md`` and ``reliability.png`` (when any calibration was
    measured) into ``out_dir``; returns the first two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "evaluation.json"
    md_path = out / "evaluation.md"
    json_path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    md_path.write_text(report.to_markdown())
    curves = {t: merge_bins([r.calibration_region for r in report.results if r.target == t and r.calibration_region])
              for t in (s.target for s in report.summary)}
    curves = {t: b for t, b in curves.items() if b is not None}
    if curves:
        reliability_diagram(curves, out / "reliability.png")
    return json_path, md_path


_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (128, 128, 0), (0, 0, 128), (170, 110, 40))


def reliability_diagram(curves: dict[str, dict[str, Any]], path: str | Path, size: int = 520) -> Path:
    """A reliability diagram (truth rate against mean predicted probability per bin, one line per
    target, the diagonal = perfect calibration) as a PNG drawn with Pillow."""
    from PIL import Image, ImageDraw

    margin, legend_w = 50, 190
    image = Image.new("RGB", (size + legend_w, size), "white")
    draw = ImageDraw.Draw(image)
    side = size - 2 * margin

    def xy(p: float, q: float) -> tuple[float, float]:
        return margin + p * side, size - margin - q * side

    draw.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    for tick in np.linspace(0, 1, 6):
        draw.line([xy(tick, 0), (xy(tick, 0)[0], xy(tick, 0)[1] + 4)], fill="black")
        draw.text((xy(tick, 0)[0] - 8, xy(tick, 0)[1] + 6), f"{tick:.1f}", fill="black")
        draw.line([xy(0, tick), (xy(0, tick)[0] - 4, xy(0, tick)[1])], fill="black")
        draw.text((xy(0, tick)[0] - 30, xy(0, tick)[1] - 6), f"{tick:.1f}", fill="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(160, 160, 160), width=1)
    draw.text((margin, 8), "reliability (near each structure): truth rate vs mean probability", fill="black")
    draw.text((margin + side / 2 - 60, size - 22), "mean predicted probability", fill="black")
    for k, (target, bins) in enumerate(curves.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        count = np.asarray(bins["count"], np.float64)
        filled = count > 0
        points = [xy(p, q) for p, q in zip(np.asarray(bins["prob_sum"])[filled] / count[filled],
                                           np.asarray(bins["truth_sum"])[filled] / count[filled], strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ece, _ = calibration_metrics(bins)
        draw.text((size + 5, margin + 16 * k), f"{target} (ECE {ece:.3f})", fill=colour)
    image.save(path)
    return Path(path)


def read_report(path: str | Path) -> EvaluationReport:
    return EvaluationReport.from_dict(json.loads(Path(path).read_text()))
