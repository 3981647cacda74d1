"""The model card's comparison table: measured reports and recorded history side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.cards import card_sections as cs


def test_dice_columns_table_aligns_runs_and_marks_missing_cells() -> None:
    history = cs.dice_from_history({"results": {"case_a": {"liver": {"dice": 0.5}, "spleen": {"dice": 0.25}}}})
    new = {("case_a", "liver"): 0.9, ("case_b", "aorta"): 0.75}
    table = cs.dice_columns_table({"old": history, "new": new}, ["spleen", "liver", "aorta"]).splitlines()
    assert table[0] == "| case | target | old | new |"
    assert table[2:] == [
        "| case_a | spleen | 0.250 | — |",
        "| case_a | liver | 0.500 | 0.900 |",
        "| case_b | aorta | — | 0.750 |",
    ]


def test_left_out_review_table_counts_flags_against_the_true_dice() -> None:
    from training.evaluation.evaluate import CaseTargetResult, EvaluationReport

    def row(target: str, dice: float, truth: int, flagged: bool | None, ml: float = 100.0) -> CaseTargetResult:
        return CaseTargetResult(case="c", target=target, dice=dice, hd95_mm=None, auroc=None, truth_voxels=truth,
                                pred_voxels=10, needs_review=flagged, pred_volume_ml=ml)

    rows = (
        row("liver", 0.92, 100, False, 1700.0), row("spleen", 0.81, 100, True),  # good: one false alarm
        row("stomach", 0.66, 100, False), row("pancreas", 0.18, 100, True),       # poor: one missed
        row("kidney_left", 0.0, 0, True),                                         # absent, flagged
        row("aorta", 0.1, 100, None),                                             # written before the flag: skipped
    )
    report = EvaluationReport(bundle="b", bundle_name="n", data="d", dataset="ds", steps=10, ensemble=5, seed=0,
                              device="cpu", seconds=1.0, cases=("c",), results=rows, summary=())
    table = cs.left_out_review_table({"fold": [report]}).splitlines()
    assert table[2] == "| fold | 1 / 2 | 1 / 2 | 1 / 1 | stomach 0.66 |"
    # A row scored before the above-range rule existed: the rule is re-applied to its stored volume.
    spilled = (row("liver", 0.47, 100, False, 3200.0), *rows[1:])
    report = EvaluationReport(bundle="b", bundle_name="n", data="d", dataset="ds", steps=10, ensemble=5, seed=0,
                              device="cpu", seconds=1.0, cases=("c",), results=spilled, summary=())
    assert cs.left_out_review_table({"fold": [report]}).splitlines()[2] == "| fold | 2 / 3 | 1 / 1 | 1 / 1 | stomach 0.66 |"


def test_seed_spread_table_reports_the_spread_and_what_moved_beyond_it() -> None:
    seed7 = {("a", "liver"): 0.70, ("a", "aorta"): 0.26, ("b", "liver"): 0.92, ("b", "pancreas"): 0.18}
    seed8 = {("a", "liver"): 0.74, ("a", "aorta"): 0.24, ("b", "liver"): 0.92, ("b", "pancreas"): 0.28}
    seed9 = {("a", "liver"): 0.50, ("a", "aorta"): 0.25, ("b", "liver"): 0.93, ("b", "pancreas"): 0.20}
    other = {("a", "liver"): 0.72, ("a", "aorta"): 0.20, ("b", "liver"): 0.935, ("b", "pancreas"): 0.33}
    lines = cs.seed_spread_table({"seed 7": seed7, "seed 8": seed8, "seed 9": seed9}, ["liver", "aorta", "pancreas"],
                                 {"recipe x": other}).splitlines()
    assert lines[0] == "| case | target | seed 7 | seed 8 | seed 9 | range |"
    assert lines[1] == "|---|---|---:|---:|---:|---:|"
    assert lines[2:6] == ["| a | liver | 0.700 | 0.740 | 0.500 | 0.240 |", "| a | aorta | 0.260 | 0.240 | 0.250 | 0.020 |",
                          "| b | liver | 0.920 | 0.920 | 0.930 | 0.010 |", "| b | pancreas | 0.180 | 0.280 | 0.200 | 0.100 |"]
    assert lines[7] == ("Seed-to-seed range over 4 rows: median 0.060, largest 0.240 (a liver); "
                        "mean of the rows: seed 7 0.515, seed 8 0.545, seed 9 0.470.")
    # liver (a) 0.72 lies inside the seeds' 0.50-0.74, liver (b) 0.935 above 0.93 but within the 0.01 margin;
    # aorta 0.20 is below 0.24 - 0.01, pancreas 0.33 above 0.28 + 0.01 (moves given from the seeds' mean)
    assert lines[8] == ("- recipe x: 2 of 4 rows outside the seeds' range (mean of the rows 0.546); "
                        "above: pancreas (b) +0.11; below: aorta (a) -0.05.")
    # a recipe scored on one fold only is read against the seeds' mean on those rows, not on all four
    one_fold = {("b", "liver"): 0.95, ("b", "pancreas"): 0.20}
    last = cs.seed_spread_table({"seed 7": seed7, "seed 8": seed8, "seed 9": seed9}, ["liver", "aorta", "pancreas"],
                                {"fold b only": one_fold}).splitlines()[-1]
    assert last == ("- fold b only: 1 of 2 rows outside the seeds' range (mean of the rows 0.575; the seeds on these "
                    "rows 0.550–0.600); above: liver (b) +0.03; below: none.")
    with pytest.raises(ValueError, match="at least two"):
        cs.seed_spread_table({"seed 7": seed7}, ["liver"])
    assert cs.seed_spread_table({"s7": seed7, "s8": {("c", "liver"): 0.5}}, ["liver"]).startswith("_No left-out row")


def test_learning_curve_table_gives_each_snapshot_and_the_recipes_range() -> None:
    at3000 = {("b", "liver"): 0.90, ("b", "spleen"): 0.80}
    at6000 = {("b", "liver"): 0.92, ("b", "spleen"): 0.84}
    at12000 = {("b", "liver"): 0.93, ("b", "spleen"): 0.87}
    seeds = {"s7": {("b", "liver"): 0.92, ("b", "spleen"): 0.82, ("a", "liver"): 0.7},
             "s8": {("b", "liver"): 0.91, ("b", "spleen"): 0.85}}
    lines = cs.learning_curve_table({12000: at12000, 3000: at3000, 6000: at6000}, ["liver", "spleen", "aorta"],
                                    seeds, "2 runs at 6000").splitlines()
    assert lines[0] == "| case | target | 3000 steps | 6000 steps | 12000 steps | 2 runs at 6000 |"
    assert lines[2] == "| b | liver | 0.900 | 0.920 | 0.930 | 0.910–0.920 |"
    assert lines[3] == "| b | spleen | 0.800 | 0.840 | 0.870 | 0.820–0.850 |"
    assert lines[-1] == "Mean of the 2 rows: 3000: 0.850; 6000: 0.880; 12000: 0.900; 2 runs at 6000: 0.870–0.880."
    # a reference run missing a row is left out of the range (never compared on other rows)
    partial = cs.learning_curve_table({6000: at6000}, ["liver", "spleen"], {"s9": {("b", "liver"): 0.5}}, "x")
    assert partial.splitlines()[0] == "| case | target | 6000 steps |" and "x:" not in partial
    assert cs.learning_curve_table({}, ["liver"]).startswith("_No snapshot")
    # the label counts the runs the range is over, not the runs passed in
    counted = cs.learning_curve_table({6000: at6000}, ["liver"], {**seeds, "s9": {("a", "liver"): 0.5}}, "{n} runs")
    assert counted.splitlines()[0].endswith("| 2 runs |") and "2 runs: 0.910–0.920." in counted


def test_sweep_summary_table_means_each_fold_and_all_rows() -> None:
    def doc(case: str, dice_default: dict[str, float | None], dice_more: dict[str, float | None]) -> dict:
        return {"cases": [case], "rows": [
            {"setting": {"sampler": "ddpm", "steps": 10, "ensemble": 5, "largest_component": None},
             "dice": dice_default, "mean_dice": None, "seconds": 60.0, "cases": [case]},
            {"setting": {"sampler": "ddpm", "steps": 20, "ensemble": 5, "largest_component": False},
             "dice": dice_more, "mean_dice": None, "seconds": 120.0, "cases": [case]}]}

    sweeps = {"a": doc("a", {"liver": 0.6, "aorta": 0.2, "kidney_left": None}, {"liver": 0.7, "aorta": 0.3}),
              "b": doc("b", {"liver": 0.9}, {"liver": 0.8})}
    lines = cs.sweep_summary_table(sweeps).splitlines()
    assert lines[0] == "| setting | a mean | b mean | mean of all rows | s per case |"
    assert lines[2] == "| ddpm, 10 steps, ensemble 5 | 0.400 | 0.900 | 0.567 | 60 |"
    assert lines[3] == "| ddpm, 20 steps, ensemble 5, no largest component | 0.500 | 0.800 | 0.600 | 120 |"
    columns = cs.sweep_dice(sweeps["a"], "a")
    assert columns == {"ddpm 10/5": {("a", "liver"): 0.6, ("a", "aorta"): 0.2},
                       "ddpm 20/5 raw": {("a", "liver"): 0.7, ("a", "aorta"): 0.3}}
    sweeps["b"]["rows"].reverse()  # settings out of step between folds: refused, never silently mixed
    try:
        cs.sweep_summary_table(sweeps)
    except ValueError as exc:
        assert "sweep of b" in str(exc)
    else:
        raise AssertionError("mismatched settings were accepted")


def test_unseen_patient_table_gives_each_bundles_rows_and_volume_share() -> None:
    from training.evaluation.evaluate import read_report

    stored = Path(__file__).resolve().parents[3] / "docs" / "model_card" / "evaluations" / "0.9.0"
    shipped = read_report(stored / "unseen_shipped_ct3slice.json")
    lines = cs.unseen_patient_table({"shipped": shipped}).splitlines()
    row = next(r for r in shipped.results if r.target == "liver")
    share = round(100 * row.pred_voxels / row.truth_voxels)
    assert lines[2] == f"| shipped | ct3slice | liver | {row.dice:.3f} | {row.hd95_mm:.1f} | {row.auroc:.3f} | {share} % |"
    assert len(lines) == 3
    assert cs.unseen_patient_table({}).startswith("_No run")
