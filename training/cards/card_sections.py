"""Markdown sections of the real-CT model card, rendered from evaluation reports (one function per section).

Every number comes from an :class:`training.evaluation.evaluate.EvaluationReport` (or a ceiling result) that a
measured run wrote; nothing here computes a metric. ``scripts/real_model_card.py`` is the wiring that
runs the evaluations and assembles the card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from model.inference.statistics import SIDE_MARGIN_MM
from training.evaluation.ceiling import CeilingResult
from training.evaluation.evaluate import EvaluationReport

# Issue 16's floors on each left-out patient (bundle defaults: 10 steps, ensemble 5).
REAL_FLOORS: dict[str, float] = {
    "liver": 0.90, "spleen": 0.85, "kidney_left": 0.85, "kidney_right": 0.85, "aorta": 0.80,
    "inferior_vena_cava": 0.70, "stomach": 0.70, "gallbladder": 0.55, "pancreas": 0.55,
}
# The paper's Table 3 (3D-IRCADb, Dice %), the figures to grow toward.
PAPER_TABLE3: dict[str, float] = {
    "spleen": 93.89, "kidney_right": 93.97, "kidney_left": 93.47, "gallbladder": 75.77, "liver": 94.93,
    "stomach": 75.17, "pancreas": 81.63,
}


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _rows(report: EvaluationReport) -> dict[tuple[str, str], Any]:
    return {(r.case, r.target): r for r in report.results}


def left_out_table(folds: Sequence[EvaluationReport], order: Sequence[str]) -> str:
    """One row per (left-out case, target present in it): Dice, HD95, variance AUROC, floor, verdict."""
    lines = [
        "| left-out case | target | Dice | floor | met? | HD95 mm | variance AUROC |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for report in folds:
        rows = _rows(report)
        for case in report.cases:
            for target in order:
                r = rows.get((case, target))
                if r is None or r.truth_voxels == 0:
                    continue
                floor = REAL_FLOORS.get(target)
                verdict = "reported" if floor is None else ("met" if r.dice >= floor else "**missed**")
                if r.dice == 0.0:
                    verdict += " (silent miss: Dice 0)"
                hd = "n/a" if r.hd95_mm is None else f"{r.hd95_mm:.1f}"
                lines.append(
                    f"| {case} | {target} | {r.dice:.3f} | {_f(floor, 2) if floor else '—'} | {verdict} | {hd} | {_f(r.auroc)} |"
                )
    return "\n".join(lines)


def per_case_minimum(folds: Sequence[EvaluationReport]) -> str:
    """Per left-out case: the worst target and how many floors it meets."""
    lines = ["| left-out case | targets present | floors met | worst target (Dice) | mean Dice |", "|---|---:|---:|---|---:|"]
    for report in folds:
        for case in report.cases:
            present = [r for r in report.results if r.case == case and r.truth_voxels > 0]
            if not present:
                continue
            worst = min(present, key=lambda r: r.dice)
            met = sum(1 for r in present if r.target in REAL_FLOORS and r.dice >= REAL_FLOORS[r.target])
            floors = sum(1 for r in present if r.target in REAL_FLOORS)
            mean = sum(r.dice for r in present) / len(present)
            lines.append(f"| {case} | {len(present)} | {met}/{floors} | {worst.target} ({worst.dice:.3f}) | {mean:.3f} |")
    return "\n".join(lines)


DiceColumn = Mapping[tuple[str, str], float]


def dice_of(reports: Sequence[EvaluationReport]) -> dict[tuple[str, str], float]:
    """Dice per (case, target) where the target is present in the case, from measured reports."""
    return {k: r.dice for rep in reports for k, r in _rows(rep).items() if r.truth_voxels > 0}


def dice_from_history(run: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """Dice per (case, target) from a recorded run (``docs/model_card/history/*.json``: ``results`` maps
    case -> target -> {"dice": ...}), for runs whose reports were not kept."""
    return {(case, target): float(v["dice"]) for case, targets in run.get("results", {}).items()
            for target, v in targets.items()}


def dice_columns_table(columns: Mapping[str, DiceColumn], order: Sequence[str]) -> str:
    """Dice per (case, target) side by side for several runs scored on the same left-out cases; a row
    appears when any run has the target present in that case."""
    names = list(columns)
    lines = ["| case | target | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    cases = dict.fromkeys(case for column in columns.values() for case, _ in column)
    for case in cases:
        for target in order:
            cells = [columns[name].get((case, target)) for name in names]
            if all(c is None for c in cells):
                continue
            lines.append(f"| {case} | {target} | " + " | ".join("—" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def seed_spread_table(runs: Mapping[str, DiceColumn], order: Sequence[str],
                      others: Mapping[str, DiceColumn] | None = None, min_margin: float = 0.01) -> str:
    """One recipe trained with several seeds (``runs``: label -> Dice per (case, target)), scored on the same
    left-out rows: Dice of each and the range they span, and a line on that spread. ``others`` (recipes measured
    once) are then read row by row: only a value outside the seeds' range by more than ``min_margin`` (the seeds
    may agree by chance) can be told from noise; its move is given from the seeds' mean."""
    labels = list(runs)
    if len(labels) < 2:
        raise ValueError("a seed spread needs at least two runs of the recipe")
    columns = [runs[label] for label in labels]
    first = columns[0]
    keys = [(case, target) for case in dict.fromkeys(c for c, _ in first) for target in order
            if all((case, target) in column for column in columns)]
    if not keys:
        return "_No left-out row was scored by every run._"
    lines = ["| case | target | " + " | ".join(labels) + " | range |", "|---|---|" + "---:|" * (len(labels) + 1)]
    low = {k: min(column[k] for column in columns) for k in keys}
    high = {k: max(column[k] for column in columns) for k in keys}
    mean = {k: sum(column[k] for column in columns) / len(columns) for k in keys}
    for case, target in keys:
        values = " | ".join(f"{column[(case, target)]:.3f}" for column in columns)
        lines.append(f"| {case} | {target} | {values} | {high[(case, target)] - low[(case, target)]:.3f} |")
    spreads = sorted(high[k] - low[k] for k in keys)
    n = len(spreads)
    median = spreads[n // 2] if n % 2 else (spreads[n // 2 - 1] + spreads[n // 2]) / 2
    worst = max(keys, key=lambda k: high[k] - low[k])
    means = ", ".join(f"{label} {sum(column[k] for k in keys) / n:.3f}" for label, column in zip(labels, columns))
    lines += ["", f"Seed-to-seed range over {n} rows: median {median:.3f}, largest {high[worst] - low[worst]:.3f} "
              f"({worst[0]} {worst[1]}); mean of the rows: {means}."]
    for name, column in (others or {}).items():
        shared = [k for k in keys if k in column]
        up = [f"{t} ({c}) {column[(c, t)] - mean[(c, t)]:+.2f}" for c, t in shared
              if column[(c, t)] > high[(c, t)] + min_margin]
        down = [f"{t} ({c}) {column[(c, t)] - mean[(c, t)]:+.2f}" for c, t in shared
                if column[(c, t)] < low[(c, t)] - min_margin]
        mean_other = sum(column[k] for k in shared) / len(shared) if shared else float("nan")
        # A recipe scored on fewer rows (one fold only) is compared with the seeds on those rows, not on all of them.
        seeds_there = "" if len(shared) == n or not shared else \
            "; the seeds on these rows " + _span([sum(c[k] for k in shared) / len(shared) for c in columns])
        lines.append(f"- {name}: {len(up) + len(down)} of {len(shared)} rows outside the seeds' range (mean of the "
                     f"rows {mean_other:.3f}{seeds_there}); above: {', '.join(up) or 'none'}; below: "
                     f"{', '.join(down) or 'none'}.")
    return "\n".join(lines)


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.3f}" if max(values) - min(values) < 5e-4 else f"{min(values):.3f}–{max(values):.3f}"


def learning_curve_table(points: Mapping[int, DiceColumn], order: Sequence[str],
                         reference: Mapping[str, DiceColumn] | None = None, reference_label: str = "") -> str:
    """One run scored on its left-out rows at several training steps (``points``: step -> Dice per (case,
    target)), a column per step, and where given the range of ``reference`` runs (the shipped recipe's seeds,
    all at one length) on the same rows; then the mean of the rows at each step. A reference run that lacks one
    of the rows is left out, and ``{n}`` in ``reference_label`` becomes the number of runs the range is over."""
    steps = sorted(points)
    if not steps:
        return "_No snapshot of this run was scored._"
    keys = [(case, target) for case in dict.fromkeys(c for p in points.values() for c, _ in p) for target in order
            if any((case, target) in points[s] for s in steps)]
    refs = [c for c in (reference or {}).values() if all(k in c for k in keys)]
    reference_label = reference_label.replace("{n}", str(len(refs)))
    header = "| case | target | " + " | ".join(f"{s} steps" for s in steps) + (f" | {reference_label} |" if refs else " |")
    lines = [header, "|---|---|" + "---:|" * (len(steps) + (1 if refs else 0))]
    for case, target in keys:
        cells = ["—" if (case, target) not in points[s] else f"{points[s][(case, target)]:.3f}" for s in steps]
        if refs:
            cells.append(_span([c[(case, target)] for c in refs]))
        lines.append(f"| {case} | {target} | " + " | ".join(cells) + " |")
    means = [f"{s}: {sum(points[s][k] for k in keys) / len(keys):.3f}" for s in steps if all(k in points[s] for k in keys)]
    if refs:
        means.append(f"{reference_label}: " + _span([sum(c[k] for k in keys) / len(keys) for c in refs]))
    lines += ["", f"Mean of the {len(keys)} rows: " + "; ".join(means) + "."]
    return "\n".join(lines)


def sweep_summary_table(sweeps: Mapping[str, Mapping[str, Any]]) -> str:
    """Sampling settings on the left-out patients: one row per setting, the mean Dice of each fold's left-out
    case over its present targets, the mean over all those rows and the seconds per case. ``sweeps`` maps a
    fold's case to its ``training.evaluation.sampling_sweep`` document (sweep.json, ``rows`` in the same setting order)."""
    folds = list(sweeps)
    settings = [row["setting"] for row in next(iter(sweeps.values()))["rows"]] if sweeps else []
    lines = ["| setting | " + " | ".join(f"{c} mean" for c in folds) + " | mean of all rows | s per case |",
             "|---|" + "---:|" * (len(folds) + 2)]
    for index, setting in enumerate(settings):
        label = f"{setting['sampler']}, {setting['steps']} steps, ensemble {setting['ensemble']}" + \
            {None: "", True: ", largest component", False: ", no largest component"}[setting.get("largest_component")] + \
            {None: "", True: ", exclusive organs", False: ", overlapping organs"}[setting.get("exclusive")]
        per_fold, every, seconds = [], [], []
        for case in folds:
            row = sweeps[case]["rows"][index]
            if row["setting"] != setting:
                raise ValueError(f"sweep of {case}: setting {index} is {row['setting']}, expected {setting}")
            values = [v for v in row["dice"].values() if v is not None]
            per_fold.append(sum(values) / len(values) if values else None)
            every += values
            seconds.append(row["seconds"] / max(1, len(row.get("cases") or [case])))
        cells = " | ".join(_f(v) for v in per_fold)
        lines.append(f"| {label} | {cells} | {_f(sum(every) / len(every) if every else None)} | "
                     f"{sum(seconds) / len(seconds):.0f} |")
    return "\n".join(lines)


def sweep_dice(sweep: Mapping[str, Any], case: str) -> dict[str, DiceColumn]:
    """Per setting label, Dice per (case, target) of one fold's sweep document, for ``dice_columns_table``."""
    out: dict[str, DiceColumn] = {}
    for row in sweep["rows"]:
        s = row["setting"]
        label = f"{s['sampler']} {s['steps']}/{s['ensemble']}" + {None: "", True: " lcc", False: " raw"}[s.get("largest_component")] \
            + {None: "", True: " excl", False: " overlap"}[s.get("exclusive")]
        out[label] = {(case, t): float(v) for t, v in row["dice"].items() if v is not None}
    return out


def comparison_table(columns: Mapping[str, Sequence[EvaluationReport]], order: Sequence[str]) -> str:
    """Dice per (case, target) side by side for several runs scored on the same left-out cases."""
    return dice_columns_table({name: dice_of(reps) for name, reps in columns.items()}, order)


def unseen_patient_table(runs: Mapping[str, EvaluationReport]) -> str:
    """Bundles scored on a patient none of them trained on: per run, case and target the Dice, HD95, variance
    AUROC and the predicted volume as a share of the reference (under 100 %: the mask is too small)."""
    lines = ["| bundle | case | target | Dice | HD95 mm | variance AUROC | predicted / reference volume |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name, report in runs.items():
        for r in report.results:
            if r.truth_voxels == 0:
                continue
            share = f"{100 * r.pred_voxels / r.truth_voxels:.0f} %"
            lines.append(f"| {name} | {r.case} | {r.target} | {r.dice:.3f} | {_f(r.hd95_mm, 1)} | {_f(r.auroc)} | {share} |")
    return "\n".join(lines) if len(lines) > 2 else "_No run was scored on it._"


def summary_table(report: EvaluationReport) -> str:
    """Per target over the report's cases: Dice mean ± sd, HD95, variance AUROC (cases with the target)."""
    lines = ["| target | cases | Dice mean ± sd | HD95 mm | variance AUROC |", "|---|---:|---:|---:|---:|"]
    for s in report.summary:
        if s.dice_mean is None:
            continue
        hd = "n/a" if s.hd95_mean_mm is None else f"{s.hd95_mean_mm:.1f}"
        lines.append(f"| {s.target} | {s.cases} | {s.dice_mean:.3f} ± {s.dice_sd:.3f} | {hd} | {_f(s.auroc_mean)} |")
    return "\n".join(lines)


def served_table(validation: Mapping[str, Any]) -> str:
    """The bundle manifest's validation section: per target the left-out Dice it is served with."""
    bar = validation.get("min_dice")
    lines = [f"| target | left-out Dice (mean over cases) | worst case | left-out cases | served (≥ {bar}) |", "|---|---:|---:|---|---|"]
    for target, mark in validation.get("targets", {}).items():
        lines.append(
            f"| {target} | {_f(mark.get('dice'))} | {_f(mark.get('dice_min'))} | {', '.join(mark.get('cases', [])) or '—'} | "
            f"{'yes' if mark.get('served') else '**no**'} |"
        )
    return "\n".join(lines)


def ceiling_table(grids: Mapping[str, Sequence[CeilingResult]], auto_encoder: Sequence[CeilingResult]) -> str:
    """Grid round-trip ceilings at each candidate spacing and the mask auto-encoder's, on the real masks."""
    spacings = list(grids)
    targets = list(dict.fromkeys([r.target for rs in grids.values() for r in rs] + [r.target for r in auto_encoder]))
    by = {s: {r.target: r for r in rs} for s, rs in grids.items()}
    ae = {r.target: r for r in auto_encoder}
    lines = [
        "| target | " + " | ".join(f"grid {s} (mean / worst)" for s in spacings) + " | mask AE at 3 mm (mean / worst) |",
        "|---|" + "---:|" * (len(spacings) + 1),
    ]
    for t in targets:
        cells = [f"{by[s][t].dice_mean:.3f} / {by[s][t].dice_min:.3f}" if t in by[s] else "—" for s in spacings]
        cells.append(f"{ae[t].dice_mean:.3f} / {ae[t].dice_min:.3f}" if t in ae else "—")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_gap_table(folds: Sequence[EvaluationReport]) -> str:
    """Mean left-out Dice against the paper's Table 3 (3D-IRCADb)."""
    lines = ["| target | paper Table 3 (%) | ours, left-out mean (%) | gap (points) |", "|---|---:|---:|---:|"]
    for target, paper in PAPER_TABLE3.items():
        dice = [r.dice for rep in folds for r in rep.results if r.target == target and r.truth_voxels > 0]
        if not dice:
            lines.append(f"| {target} | {paper:.1f} | not in a left-out case | — |")
            continue
        ours = 100 * sum(dice) / len(dice)
        lines.append(f"| {target} | {paper:.1f} | {ours:.1f} | {paper - ours:.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- review flag and calibration (issue 18)
def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


def left_out_review_table(runs: Mapping[str, Sequence[EvaluationReport]], poor_below: float = 0.7) -> str:
    """The shipped review flag (``needs_review`` of each row) on left-out patients, per run: the share of poor
    segmentations (organ present, Dice < ``poor_below``) it flags, of good ones (false alarms), and of organs
    absent from the scan (where any mask is a false positive). Rows written before the flag existed are skipped.

    The flag is the stored one, or the size rule's "above the typical volume" (added after some of
    these rows were scored: a reason is only ever added to a row, so this is the shipped rule)."""
    from model.inference.statistics import above_typical_volume
    lines = [f"| run | poor (Dice < {poor_below:g}) flagged | good flagged (false alarm) | absent organ flagged | "
             "poor rows not flagged |", "|---|---:|---:|---:|---|"]

    def flagged(r: Any) -> bool:
        return bool(r.needs_review) or above_typical_volume(r.target, r.pred_volume_ml)

    def share(rows: Sequence[Any]) -> str:
        return "n/a" if not rows else f"{sum(flagged(r) for r in rows)} / {len(rows)}"

    for name, reports in runs.items():
        rows = [r for report in reports for r in report.results if r.needs_review is not None]
        present = [r for r in rows if r.truth_voxels > 0]
        poor = [r for r in present if r.dice < poor_below]
        good = [r for r in present if r.dice >= poor_below]
        absent = [r for r in rows if r.truth_voxels == 0]
        missed = ", ".join(f"{r.target} {r.dice:.2f}" for r in poor if not flagged(r)) or "—"
        lines.append(f"| {name} | {share(poor)} | {share(good)} | {share(absent)} | {missed} |")
    return "\n".join(lines)


def review_flag_section(document: Mapping[str, Any]) -> str:
    """The review flag's measured ranking power and false-alarm rate (training.evaluation.review_flag.measure)."""
    runs = document["runs"]
    validation = [r for r in runs if r["validation"]]
    test = [r for r in runs if not r["validation"]]

    def describe(items: Sequence[Mapping[str, Any]]) -> str:
        return "; ".join(f"{r['bundle']} on {r['dataset']} ({len({row['case'] for row in r['rows']})} case(s), "
                         f"{'held out' if r['held_out'] else 'its training data'})" for r in items) or "none"

    poor = document["poor_dice"]
    lines = [
        f"Scores computed from the ensemble alone, against the true Dice of each case × target with the organ "
        f"present (rows with an empty mean mask are left to the empty rule). Thresholds are chosen on the "
        f"validation runs (Youden's J for Dice < {poor:g}) and tested on the others.",
        "",
        f"- validation: {describe(validation)}",
        f"- test: {describe(test)}",
        "",
        f"| score (higher = worse) | rows (Dice < {poor:g}) | Spearman ρ vs Dice | AUROC for Dice < {poor:g} "
        "| threshold (validation) | test: flagged poor / flagged good |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in document["scores"]:
        lines.append(
            f"| {s['score']} | {s['rows']} ({s['poor']}) | {_f(s['spearman'], 2)} | {_f(s['auroc'], 2)} | "
            f"{_f(s['threshold'], 3)} | {_pct(s['test_sensitivity'])} / {_pct(s['test_false_alarm'])} |"
        )
    policy = document["policy"]
    scored = [s for s in document["scores"] if s["auroc"] is not None]
    if scored:
        best = max(scored, key=lambda s: s["auroc"])
        top_rho = max((s for s in scored if s["spearman"] is not None), key=lambda s: s["spearman"], default=None)
        lines += ["", f"Chosen: **{best['score']}** (the highest AUROC"
                  + (" and Spearman ρ" if top_rho is best else "") + "); the shipped threshold is its validation one."]
    lines += [
        "",
        f"Shipped rule (`model.inference.statistics.ReviewPolicy`): flag an empty mask, a mask below its organ's typical "
        f"volume (`model.targets.vocabulary.size_prior`) that does not touch the volume's edge, a mask above it, a sided "
        f"organ whose centre lies over {SIDE_MARGIN_MM:g} mm on the wrong side of the body's (`model.targets.vocabulary.usual_side`: a mask "
        f"on the wrong organ, or a header that mirrors the patient; not in the rates below, whose stored rows carry no "
        f"position), or members' pairwise Dice "
        f"< {policy['min_pairwise_dice']:g}.",
        "",
        "| cases | rows (organ present / absent) | Dice < 0.7 flagged | Dice ≥ 0.7 flagged (false alarm) "
        "| empty/size rule: false alarms | absent organ flagged |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, key in (("validation", "validation"), ("test", "test"), ("all", "all")):
        r = document["rule"][key]
        lines.append(
            f"| {name} | {r['present']} / {r['absent']} | {_pct(r['sensitivity'])} ({r['poor']}) | "
            f"{_pct(r['false_alarm'])} ({r['good']}) | {_pct(r['size_rule_false_alarm'])} | {_pct(r['absent_flagged'])} |"
        )
    return "\n".join(lines)


def calibration_section(document: Mapping[str, Any], bundle: str) -> str:
    """ECE (15 bins) and Brier of the mean probability per target for ``bundle``'s runs."""
    lines = [
        "| data | target | cases | Dice mean | ECE near / whole volume | Brier near / whole volume | variance AUROC |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in document["runs"]:
        if run["bundle"] != bundle:
            continue
        for c in run["calibration"]:
            lines.append(
                f"| {run['dataset']} | {c['target']} | {c['cases']} | {_f(c['dice_mean'])} | "
                f"{_f(c['ece_region'])} / {_f(c['ece'], 4)} | {_f(c['brier_region'])} / {_f(c['brier'], 4)} | "
                f"{_f(c['variance_auroc'])} |"
            )
    return "\n".join(lines)
