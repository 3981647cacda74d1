"""Choosing and measuring the review flag of ``statistics.json`` on labelled cases.

Input: :class:`training.evaluation.evaluate.EvaluationReport` runs (each case × target row carries the true
Dice and the ensemble-only scores of :mod:`model.inference.statistics`). For every score this measures how
well it ranks the true Dice (Spearman ρ) and how well it detects a poor segmentation (AUROC for
Dice < ``POOR_DICE``), picks the threshold on the *validation* runs (Youden's J), and reports the
shipped rule (:class:`model.inference.statistics.ReviewPolicy`: empty mask, implausibly small or large
for the organ, members disagreeing) as sensitivity and false-alarm rate on every run.

Rows with an empty truth (the organ is not in the field of view, or not annotated as present)
have no Dice; they enter only the false-alarm count of the empty/size rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from model.inference.statistics import ReviewPolicy, review_reasons
from model.targets.vocabulary import size_prior
from training.evaluation.evaluate import CaseTargetResult, EvaluationReport, auroc

__all__ = ["POOR_DICE", "MeasuredRun", "ScoreResult", "measure", "read_measurement", "write_measurement"]

POOR_DICE = 0.7
ROW_KEYS = ("case", "target", "dice", "truth_voxels", "pred_voxels", "pred_volume_ml", "pairwise_dice",
            "high_variance_share", "volume_cv", "touches_edge")


@dataclass(frozen=True)
class MeasuredRun:
    """One bundle on one dataset: ``validation`` runs choose thresholds, the others only test them."""

    label: str
    bundle: str
    dataset: str
    held_out: bool  # the bundle never trained on these cases
    validation: bool
    rows: tuple[dict[str, Any], ...]
    calibration: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_report(cls, label: str, report: EvaluationReport, *, held_out: bool, validation: bool,
                    bundle: str | None = None) -> MeasuredRun:
        """``bundle``: how the card names the bundle (default: the report's bundle name)."""
        rows = tuple({k: getattr(r, k) for k in ROW_KEYS} for r in report.results)
        calibration = tuple(
            {"target": s.target, "cases": s.cases + s.absent_cases, "ece": s.ece, "brier": s.brier,
             "ece_region": s.ece_region, "brier_region": s.brier_region, "variance_auroc": s.auroc_mean,
             "dice_mean": s.dice_mean}
            for s in report.summary
        )
        return cls(label, bundle or report.bundle_name, report.dataset, held_out, validation, rows, calibration)


# Each score as "badness" (higher = more likely poor), defined only on rows with a non-empty mask.
SCORES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "1 - pairwise member Dice": lambda r: None if r["pairwise_dice"] is None else 1.0 - r["pairwise_dice"],
    "high-variance share of the mask": lambda r: r["high_variance_share"],
    "ensemble volume CV": lambda r: r["volume_cv"],
}


@dataclass(frozen=True)
class ScoreResult:
    score: str
    rows: int
    poor: int
    spearman: float | None  # of -badness vs Dice (positive = the score ranks Dice the right way)
    auroc: float | None  # badness as a detector of Dice < POOR_DICE
    threshold: float | None  # chosen on the validation rows (Youden's J)
    test_sensitivity: float | None
    test_false_alarm: float | None


def _scored(rows: Sequence[dict[str, Any]], score: Callable[[dict[str, Any]], float | None]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(score(r), r["dice"]) for r in rows if r["truth_voxels"] > 0 and r["pred_voxels"] > 0]
    pairs = [(s, d) for s, d in pairs if s is not None]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    values, dice = np.array(pairs, np.float64).T
    return values, dice


def _youden(values: np.ndarray, poor: np.ndarray) -> float | None:
    if poor.all() or not poor.any():
        return None
    best, best_j = None, -1.0
    for t in np.unique(values):
        flagged = values >= t
        j = flagged[poor].mean() - flagged[~poor].mean()
        if j > best_j:
            best, best_j = float(t), j
    return best


def _rates(flagged: np.ndarray, poor: np.ndarray) -> tuple[float | None, float | None]:
    sensitivity = float(flagged[poor].mean()) if poor.any() else None
    false_alarm = float(flagged[~poor].mean()) if (~poor).any() else None
    return sensitivity, false_alarm


def score_table(runs: Sequence[MeasuredRun]) -> list[ScoreResult]:
    """Every candidate score: ranking power on all rows, threshold from validation rows, rates on the rest."""
    everything = [r for run in runs for r in run.rows]
    validation = [r for run in runs if run.validation for r in run.rows]
    test = [r for run in runs if not run.validation for r in run.rows]
    out = []
    for name, score in SCORES.items():
        values, dice = _scored(everything, score)
        poor = dice < POOR_DICE
        rho = None
        if values.size > 2 and np.ptp(values) > 0 and np.ptp(dice) > 0:
            rho = float(stats.spearmanr(-values, dice).statistic)
        v_values, v_dice = _scored(validation, score)
        threshold = _youden(v_values, v_dice < POOR_DICE) if v_values.size else None
        t_values, t_dice = _scored(test, score)
        sens = alarm = None
        if threshold is not None and t_values.size:
            sens, alarm = _rates(t_values >= threshold, t_dice < POOR_DICE)
        out.append(ScoreResult(name, int(values.size), int(poor.sum()), rho, auroc(values, poor) if values.size else None,
                               threshold, sens, alarm))
    return out


def rule_outcomes(runs: Sequence[MeasuredRun], policy: ReviewPolicy) -> list[dict[str, Any]]:
    """The shipped rule re-applied to every row (so a changed policy is measured without re-running)."""
    out = []
    for run in runs:
        for r in run.rows:
            entry = {"voxel_count": r["pred_voxels"], "volume_ml": r["pred_volume_ml"] or 0.0,
                     "touches_edge": bool(r["touches_edge"]), "quality": {"pairwise_dice": r["pairwise_dice"]}}
            reasons = review_reasons(entry, size_prior(r["target"]) if policy.size_priors else None, policy)
            out.append({"run": run.label, "validation": run.validation, **r, "flagged": bool(reasons),
                        "reasons": reasons})
    return out


def rule_summary(outcomes: Sequence[dict[str, Any]], validation: bool | None = None) -> dict[str, Any]:
    """Sensitivity for Dice < POOR_DICE, false alarms among good rows, and the empty/size rules'
    false alarms (flagged for size or emptiness while Dice ≥ POOR_DICE or the organ is truly absent)."""
    rows = [o for o in outcomes if validation is None or o["validation"] is validation]
    present = [o for o in rows if o["truth_voxels"] > 0]
    poor = [o for o in present if o["dice"] < POOR_DICE]
    good = [o for o in present if o["dice"] >= POOR_DICE]
    absent = [o for o in rows if o["truth_voxels"] == 0]

    def size_flag(o: dict[str, Any]) -> bool:
        return any(reason == "empty mask" or "the typical" in reason for reason in o["reasons"])

    def share(items: Sequence[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> float | None:
        return None if not items else sum(1 for o in items if test(o)) / len(items)

    return {
        "rows": len(rows), "present": len(present), "poor": len(poor), "good": len(good), "absent": len(absent),
        "sensitivity": share(poor, lambda o: o["flagged"]),
        "false_alarm": share(good, lambda o: o["flagged"]),
        "size_rule_false_alarm": share(good, size_flag),
        "size_rule_sensitivity": share(poor, size_flag),
        "absent_flagged": share(absent, lambda o: o["flagged"]),
        "empty_predictions_of_present_organs": sum(1 for o in present if o["pred_voxels"] == 0),
    }


def measure(runs: Sequence[MeasuredRun], policy: ReviewPolicy = ReviewPolicy()) -> dict[str, Any]:
    outcomes = rule_outcomes(runs, policy)
    return {
        "poor_dice": POOR_DICE,
        "policy": asdict(policy),
        "scores": [asdict(s) for s in score_table(runs)],
        "rule": {"all": rule_summary(outcomes), "validation": rule_summary(outcomes, True),
                 "test": rule_summary(outcomes, False)},
        "runs": [asdict(r) for r in runs],
    }


def write_measurement(document: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    return path


def read_measurement(path: str | Path) -> tuple[list[MeasuredRun], dict[str, Any]]:
    document = json.loads(Path(path).read_text())
    runs = [MeasuredRun(**{**r, "rows": tuple(r["rows"]), "calibration": tuple(r.get("calibration", ()))})
            for r in document["runs"]]
    return runs, document


def rows_from_results(results: Sequence[CaseTargetResult]) -> tuple[dict[str, Any], ...]:
    return tuple({k: getattr(r, k) for k in ROW_KEYS} for r in results)
