"""Metrics of training.evaluation.evaluate on arrays with known answers, and a library run on tiny phantoms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from training.evaluation.evaluate import (
    CaseTargetResult,
    auroc,
    dice_score,
    error_region,
    evaluate_case_targets,
    hd95_mm,
    summarise,
    variance_auroc,
)


def test_dice_two_thirds() -> None:
    # |P| = 2, |T| = 4, |P ∩ T| = 2 -> 2·2 / (2 + 4) = 2/3.
    truth = np.zeros((4, 4, 4), bool)
    truth[0, 0, :4] = True
    pred = np.zeros_like(truth)
    pred[0, 0, :2] = True
    assert dice_score(pred, truth) == pytest.approx(2 / 3)


def test_dice_conventions_for_empty_masks() -> None:
    empty = np.zeros((3, 3, 3), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert dice_score(empty, empty) == 1.0
    assert dice_score(some, empty) == 0.0
    assert dice_score(empty, some) == 0.0
    assert dice_score(some, some) == 1.0


def test_hd95_known_shift_in_mm_uses_spacing() -> None:
    truth = np.zeros((20, 20, 20), bool)
    truth[5:10, 5:10, 5:10] = True
    pred = np.roll(truth, 2, axis=2)  # shifted 2 voxels along axis 2
    assert hd95_mm(pred, truth, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95_mm(pred, truth, (1.0, 1.0, 3.0)) == pytest.approx(6.0)
    assert hd95_mm(truth, truth, (1.0, 1.0, 1.0)) == pytest.approx(0.0)


def test_hd95_undefined_when_a_mask_is_empty() -> None:
    truth = np.zeros((8, 8, 8), bool)
    truth[2:4, 2:4, 2:4] = True
    assert hd95_mm(np.zeros_like(truth), truth, (1, 1, 1)) is None
    assert hd95_mm(truth, np.zeros_like(truth), (1, 1, 1)) is None


def test_auroc_known_values() -> None:
    labels = np.array([0, 0, 0, 1, 1], bool)
    assert auroc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), labels) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.7, 0.2, 0.1]), labels) == 0.0
    assert auroc(np.full(5, 0.4), labels) == 0.5
    # one tie across classes: pairs (neg, pos) = 6; wins: 0.5 (tie) + 5 -> 5.5 / 6
    assert auroc(np.array([0.1, 0.2, 0.5, 0.5, 0.9]), labels) == pytest.approx(5.5 / 6)
    assert auroc(np.array([0.1, 0.2]), np.array([False, False])) is None


def test_auroc_matches_pairwise_definition_on_random_data() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert auroc(scores, labels) == pytest.approx(pairwise)


def test_error_region_is_margin_around_union_in_mm() -> None:
    truth = np.zeros((1, 1, 41), bool)
    truth[0, 0, 20] = True
    region = error_region(truth, truth, (1.0, 1.0, 2.0), margin_mm=4.0)
    assert np.flatnonzero(region[0, 0]).tolist() == [18, 19, 20, 21, 22]
    empty = np.zeros_like(truth)
    assert not error_region(empty, empty, (1, 1, 1), 5.0).any()


def test_variance_auroc_perfect_when_variance_marks_exactly_the_errors() -> None:
    truth = np.zeros((12, 12, 12), bool)
    truth[3:9, 3:9, 3:9] = True
    mean = truth.astype(np.float32) * 0.9
    mean[3, 3:9, 3:9] = 0.2  # one wrong face of the cube
    variance = np.where((mean > 0.5) != truth, 0.2, 0.01).astype(np.float32)
    assert variance_auroc(mean, variance, truth, (1, 1, 1)) == 1.0
    assert variance_auroc(mean, 0.3 - variance, truth, (1, 1, 1)) == 0.0


def test_case_results_and_summary_exclude_absent_targets_from_dice() -> None:
    truth = np.zeros((6, 6, 6), bool)
    truth[1:3, 1:3, 1:3] = True
    fp = np.zeros_like(truth, dtype=np.float32)
    fp[4, 4, 4] = 1.0
    means = {"liver": truth.astype(np.float32), "spleen": fp}
    variances = {k: np.zeros_like(v) for k, v in means.items()}
    rows = evaluate_case_targets("c1", means, variances, {"liver": truth, "spleen": np.zeros_like(truth)}, (1, 1, 1))
    by = {r.target: r for r in rows}
    assert by["liver"].dice == 1.0 and by["liver"].hd95_mm == 0.0
    assert by["spleen"].dice == 0.0 and by["spleen"].hd95_mm is None and "absent" in (by["spleen"].note or "")
    extra = CaseTargetResult("c2", "liver", 0.5, 3.0, None, 10, 10)
    liver, spleen = summarise([*rows, extra], ["liver", "spleen"])
    assert liver.cases == 2 and liver.dice_mean == pytest.approx(0.75)
    assert liver.dice_sd == pytest.approx(np.std([1.0, 0.5], ddof=1))
    assert liver.hd95_mean_mm == pytest.approx(1.5)
    assert spleen.cases == 0 and spleen.dice_mean is None
    assert spleen.absent_cases == 1 and spleen.false_positive_cases == 1


def test_evaluate_dataset_with_random_bundle_on_tiny_phantoms(tmp_path: Path) -> None:
    from model.bundle.loaded import load_bundle, write_random_bundle
    from training.evaluation.evaluate import evaluate_dataset, read_report, write_report
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", 1, 5, PhantomSpec(shape=(40, 40, 6), spacing=(9.0, 9.0, 12.0)))
    bundle = load_bundle(write_random_bundle(tmp_path / "bundle", seed=1), device="cpu")
    report = evaluate_dataset(bundle, data, steps=2, ensemble=2, targets=["liver", "spleen"])
    assert [s.target for s in report.summary] == ["spleen", "liver"]  # vocabulary order
    assert len(report.results) == 2 and report.cases == ("phantom_5_000",)
    for row in report.results:
        assert 0.0 <= row.dice <= 1.0
        assert row.truth_voxels > 0
        assert row.hd95_mm is None or (math.isfinite(row.hd95_mm) and row.hd95_mm >= 0)
    json_path, md_path = write_report(report, tmp_path / "report")
    assert read_report(json_path) == report
    assert "| liver | 1 |" in md_path.read_text()
    assert report.sampler == "ddpm"  # the bundle's default, recorded


def test_evaluate_dataset_records_and_uses_the_requested_sampler(tmp_path: Path) -> None:
    from model.bundle.loaded import load_bundle, write_random_bundle
    from training.evaluation.evaluate import evaluate_dataset
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", 1, 6, PhantomSpec(shape=(40, 40, 6), spacing=(9.0, 9.0, 12.0)))
    bundle = load_bundle(write_random_bundle(tmp_path / "bundle", seed=1), device="cpu")
    ddim = evaluate_dataset(bundle, data, steps=2, ensemble=2, targets=["liver"], sampler="ddim")
    ddpm = evaluate_dataset(bundle, data, steps=2, ensemble=2, targets=["liver"], sampler="ddpm")
    assert ddim.sampler == "ddim" and ddpm.sampler == "ddpm"
    assert "ddim sampler, steps 2" in ddim.to_markdown()


def test_evaluate_dataset_exclusive_scores_the_targets_together(tmp_path: Path) -> None:
    from model.bundle.loaded import load_bundle, write_random_bundle
    from training.evaluation.evaluate import evaluate_dataset, read_report, write_report
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", 1, 8, PhantomSpec(shape=(40, 40, 6), spacing=(9.0, 9.0, 12.0)))
    bundle = load_bundle(write_random_bundle(tmp_path / "bundle", seed=1), device="cpu")
    targets = ["liver", "spleen", "kidney_left", "kidney_right", "stomach"]
    # Both in one pass, so both see the same random draws; only the competition differs.
    overlapping = evaluate_dataset(bundle, data, steps=2, ensemble=2, targets=targets, exclusive=False,
                                   targets_per_pass=len(targets))
    exclusive = evaluate_dataset(bundle, data, steps=2, ensemble=2, targets=targets, exclusive=True)
    assert (overlapping.exclusive, exclusive.exclusive) == (False, True)
    before = {r.target: r.pred_voxels for r in overlapping.results}
    after = {r.target: r.pred_voxels for r in exclusive.results}
    assert all(after[name] <= before[name] for name in targets)  # capping only takes voxels away
    assert sum(after.values()) < sum(before.values())  # the random model's organs overlap: some were taken
    assert read_report(write_report(exclusive, tmp_path / "report")[0]) == exclusive
    assert bundle.config.sampling.exclusive is False
    default = evaluate_dataset(bundle, data, steps=2, ensemble=2, targets=targets, targets_per_pass=len(targets))
    assert default.exclusive is False and {r.target: r.pred_voxels for r in default.results} == before
