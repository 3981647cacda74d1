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
