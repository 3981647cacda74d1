"""training.evaluation.served + `latentseg set-served`: left-out Dice per target decides which targets a bundle serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main as latentseg
from model.bundle.loaded import load_bundle, write_random_bundle
from model.bundle.manifest import read_manifest
from model.errors import BundleError, InputError
from model.inference.pipeline import resolve_targets
from training.evaluation.evaluate import CaseTargetResult, EvaluationReport, summarise, write_report
from training.evaluation.served import validation_section, write_validation


def _report(case: str, dice: dict[str, float], absent: tuple[str, ...] = ()) -> EvaluationReport:
    rows = [CaseTargetResult(case, t, d, 5.0, 0.8, 1000, 900) for t, d in dice.items()]
    rows += [CaseTargetResult(case, t, 0.0, None, None, 0, 0) for t in absent]
    names = [*dice, *absent]
    return EvaluationReport(
        bundle=f"runs/real/fold_{case}/bundle", bundle_name="fold", data="ts", dataset="totalsegmentator_v2",
        steps=10, ensemble=5, seed=0, device="cpu", seconds=1.0, cases=(case,), results=tuple(rows),
        summary=summarise(rows, names),
    )


def test_targets_under_the_bar_or_never_left_out_are_not_served(tmp_path: Path) -> None:
    bundle = write_random_bundle(tmp_path / "bundle")
    trained = read_manifest(bundle).trained_targets
    reports = [
        _report("a", {"liver": 0.9, "kidney_left": 0.3, "spleen": 0.7}),
        _report("b", {"liver": 0.8, "spleen": 0.5}, absent=("kidney_right",)),
    ]
    section = validation_section(reports, trained, min_dice=0.5)
    marks = section["targets"]
    assert marks["liver"]["served"] and marks["liver"]["dice"] == pytest.approx(0.85) and marks["liver"]["cases"] == ["a", "b"]
    assert marks["spleen"]["served"] and marks["spleen"]["dice_min"] == pytest.approx(0.5)
    assert not marks["kidney_left"]["served"]
    assert not marks["kidney_right"]["served"] and marks["kidney_right"]["dice"] is None  # absent from every left-out case
    write_validation(bundle, section)
    loaded = load_bundle(bundle, device="cpu")
    assert "liver" in loaded.served_targets and "kidney_left" not in loaded.served_targets
    assert set(loaded.trained_targets) == set(trained)  # still trained, still scored by `latentseg evaluate`
    assert [t.name for t in resolve_targets(loaded, "liver, spleen")] == ["liver", "spleen"]
    with pytest.raises(InputError, match=r"does not serve kidney_left \(kidney_left: left-out validation Dice 0.30 \(< 0.5\)\)"):
        resolve_targets(loaded, "liver,kidney_left")


def test_a_malformed_validation_section_is_refused(tmp_path: Path) -> None:
    bundle = write_random_bundle(tmp_path / "bundle")
    with pytest.raises(BundleError, match="served must be true or false"):
        write_validation(bundle, {"targets": {"liver": {"served": "yes"}}})
    bundle2 = write_random_bundle(tmp_path / "bundle2")
    with pytest.raises(BundleError, match="not a trained target"):
        write_validation(bundle2, {"targets": {"no_such_target": {"served": True}}})


def test_set_served_cli_marks_a_bundle_from_report_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = write_random_bundle(tmp_path / "bundle")
    json_a, _ = write_report(_report("a", {"liver": 0.91, "pancreas": 0.2}), tmp_path / "a")
    json_b, _ = write_report(_report("b", {"liver": 0.88}), tmp_path / "b")
    assert latentseg(["set-served", str(bundle), "--reports", str(json_a), str(json_b), "--min-dice", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "NOT served" in out
    manifest = read_manifest(bundle)
    assert manifest.validation["min_dice"] == 0.6
    assert "liver" in manifest.served_targets and "pancreas" not in manifest.served_targets
    assert latentseg(["set-served", str(bundle), "--reports", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such evaluation report" in capsys.readouterr().err


def test_evaluation_scores_targets_the_bundle_does_not_serve(tmp_path: Path, msd_phantoms: Path) -> None:
    from training.evaluation.evaluate import evaluate_dataset

    bundle = write_random_bundle(tmp_path / "bundle")
    write_validation(bundle, validation_section([_report("a", {"liver": 0.9, "spleen": 0.1})],
                                                read_manifest(bundle).trained_targets))
    loaded = load_bundle(bundle, device="cpu")
    assert "spleen" not in loaded.served_targets
    report = evaluate_dataset(loaded, msd_phantoms, steps=2, ensemble=1, targets=["liver", "spleen"], max_cases=1)
    assert {s.target for s in report.summary} == {"liver", "spleen"}
