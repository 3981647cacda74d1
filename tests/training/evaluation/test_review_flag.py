"""training.evaluation.review_flag: ranking power, validation thresholds and the shipped rule's rates on known rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.inference.statistics import ReviewPolicy
from training.cards import card_sections as cs
from training.evaluation.review_flag import MeasuredRun, measure, read_measurement, write_measurement


def row(case: str, target: str, dice: float, pairwise: float | None, *, volume: float = 1500.0, truth: int = 1000,
        pred: int = 1000, edge: bool = False) -> dict:
    return {"case": case, "target": target, "dice": dice, "truth_voxels": truth, "pred_voxels": pred,
            "pred_volume_ml": volume, "pairwise_dice": pairwise, "high_variance_share": None if pred == 0 else 1 - dice,
            "volume_cv": 0.01, "touches_edge": edge}


def runs() -> list[MeasuredRun]:
    validation = tuple(row(f"p{i}", "liver", d, d) for i, d in enumerate((0.95, 0.9, 0.85, 0.5, 0.4, 0.3)))
    test = (
        row("a", "liver", 0.92, 0.9), row("a", "spleen", 0.9, 0.6, volume=200.0),  # good, members disagree: alarm
        row("a", "pancreas", 0.2, 0.3, volume=60.0),  # poor and flagged
        row("b", "kidney_left", 0.0, 1.0, volume=0.0, pred=0),  # confidently wrong: empty mask
        row("b", "kidney_right", 1.0, 1.0, volume=0.0, truth=0, pred=0),  # truly absent, empty: flagged anyway
    )
    return [MeasuredRun("val", "v1", "phantoms", True, True, validation),
            MeasuredRun("test", "v1", "real", True, False, test)]


def test_scores_rank_dice_and_the_threshold_comes_from_validation(tmp_path: Path) -> None:
    document = measure(runs(), ReviewPolicy(min_pairwise_dice=0.85))
    pairwise = next(s for s in document["scores"] if s["score"] == "1 - pairwise member Dice")
    assert pairwise["rows"] == 9 and pairwise["poor"] == 4  # the empty-mask row is not scored
    # validation: badness 1 - pairwise separates Dice < 0.7 exactly; the lowest poor badness is 1 - 0.5
    assert pairwise["threshold"] == pytest.approx(0.5)
    assert pairwise["test_sensitivity"] == 1.0 and pairwise["test_false_alarm"] == 0.0
    assert pairwise["auroc"] == pytest.approx(1.0) and pairwise["spearman"] > 0.8
    rule = document["rule"]["test"]
    assert rule["poor"] == 2 and rule["sensitivity"] == 1.0  # pancreas (disagreement) and the empty kidney
    assert rule["good"] == 2 and rule["false_alarm"] == 0.5  # the spleen's members disagree
    assert rule["size_rule_false_alarm"] == 0.0 and rule["absent_flagged"] == 1.0
    assert rule["empty_predictions_of_present_organs"] == 1
    path = write_measurement(document, tmp_path / "m.json")
    again, loaded = read_measurement(path)
    assert [r.label for r in again] == ["val", "test"] and loaded["rule"] == document["rule"]
    text = cs.review_flag_section(loaded)
    assert "| 1 - pairwise member Dice | 9 (4) | " in text and "| test | 4 / 1 | 100 % (2) | 50 % (2) | 0 % | 100 % |" in text
