"""The model card's comparison table: measured reports and recorded history side by side."""

from __future__ import annotations

from training import card_sections as cs


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
    from training.evaluate import CaseTargetResult, EvaluationReport

    def row(target: str, dice: float, truth: int, flagged: bool | None) -> CaseTargetResult:
        return CaseTargetResult(case="c", target=target, dice=dice, hd95_mm=None, auroc=None, truth_voxels=truth,
                                pred_voxels=10, needs_review=flagged)

    rows = (
        row("liver", 0.92, 100, False), row("spleen", 0.81, 100, True),     # good: one false alarm
        row("stomach", 0.66, 100, False), row("pancreas", 0.18, 100, True),  # poor: one missed
        row("kidney_left", 0.0, 0, True),                                    # absent, flagged
        row("aorta", 0.1, 100, None),                                        # written before the flag: skipped
    )
    report = EvaluationReport(bundle="b", bundle_name="n", data="d", dataset="ds", steps=10, ensemble=5, seed=0,
                              device="cpu", seconds=1.0, cases=("c",), results=rows, summary=())
    table = cs.left_out_review_table({"fold": [report]}).splitlines()
    assert table[2] == "| fold | 1 / 2 | 1 / 2 | 1 / 1 | stomach 0.66 |"
