"""Calibration metrics of training.evaluation.evaluate (ECE over 15 bins, Brier) and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.evaluation.evaluate import calibration_bins, calibration_metrics, merge_bins, reliability_diagram


def test_ece_and_brier_known_values() -> None:
    # 100 voxels at p = 0.8 of which half are true: gap 0.3; Brier = (0.2² + 0.8²) / 2 = 0.34
    p = np.full(100, 0.8)
    truth = np.arange(100) < 50
    ece, brier = calibration_metrics(calibration_bins(p, truth))
    assert ece == pytest.approx(0.3) and brier == pytest.approx(0.34)
    # A perfectly calibrated two-bin case: p = 0.1 with 10 % true, p = 0.9 with 90 % true.
    p = np.r_[np.full(100, 0.1), np.full(100, 0.9)]
    truth = np.r_[np.arange(100) < 10, np.arange(100) < 90]
    ece, brier = calibration_metrics(calibration_bins(p, truth))
    assert ece == pytest.approx(0.0, abs=1e-12) and brier == pytest.approx(0.09)


def test_bins_add_up_over_cases_and_p_one_lands_in_the_last_bin() -> None:
    rng = np.random.default_rng(0)
    p, truth = rng.random(1000), rng.random(1000) < 0.3
    p[0] = 1.0
    whole = calibration_bins(p, truth)
    assert whole["count"][-1] >= 1 and sum(whole["count"]) == 1000
    merged = merge_bins([calibration_bins(p[:400], truth[:400]), calibration_bins(p[400:], truth[400:])])
    assert np.allclose(merged["count"], whole["count"]) and np.allclose(merged["prob_sum"], whole["prob_sum"])
    assert calibration_metrics(merged) == pytest.approx(calibration_metrics(whole))
    assert calibration_metrics(None) == (None, None) and merge_bins([]) is None


def test_reliability_diagram_is_a_png_with_one_colour_per_target(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    p = rng.random(5000)
    curves = {"liver": calibration_bins(p, rng.random(5000) < p), "spleen": calibration_bins(p, rng.random(5000) < p ** 3)}
    path = reliability_diagram(curves, tmp_path / "reliability.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 400 and image.shape[1] > 500
    for colour in ((230, 25, 75), (60, 180, 75)):  # the first two palette colours are drawn
        assert (image == colour).all(axis=2).sum() > 50
