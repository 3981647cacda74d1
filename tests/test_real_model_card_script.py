"""scripts/real_model_card.py: columns for recipes tried and not shipped (stored beside a version's reports)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]
STORED = REPO / "docs" / "model_card" / "evaluations" / "0.9.0"
# Stored reports that never change (a replicate, not the folds of record, which a later session may replace).
SEED8 = "replicate_seed8_fold_{}.json"


@pytest.fixture(scope="module")
def card() -> ModuleType:
    return load_script("real_model_card")


def test_stored_experiments_become_labelled_columns(card: ModuleType, tmp_path: Path) -> None:
    from training.cards import card_sections as cs

    assert card.stored_experiments(tmp_path, ["ts_a_torso", "ts_b_upper"]) == {}  # no index: no columns
    (tmp_path / "experiments.json").write_text(json.dumps({"p08": "contrast 0.8 (not shipped)", "gone": "no reports"}))
    shutil.copy(STORED / SEED8.format("ts_b_upper"), tmp_path / "experiment_p08_fold_ts_b_upper.json")
    found = card.stored_experiments(tmp_path, ["ts_a_torso", "ts_b_upper"])
    assert list(found) == ["contrast 0.8 (not shipped)"]  # an experiment without reports is left out
    dice = cs.dice_of(found["contrast 0.8 (not shipped)"])
    liver = [v for (case, target), v in dice.items() if target == "liver"]
    assert len(liver) == 1 and liver[0] == pytest.approx(0.914, abs=5e-4)  # the stored seed-8 ts_b_upper liver


def test_replicate_and_sweeps_make_the_seed_and_sampling_sections(card: ModuleType, tmp_path: Path) -> None:
    from training.evaluation.evaluate import read_report

    cases = ["ts_a_torso", "ts_b_upper"]
    assert card.stored_experiments(tmp_path, cases, kind="replicate") == {} and card.stored_sweeps(tmp_path, cases) == {}
    (tmp_path / "replicates.json").write_text(json.dumps({"seed8": "same recipe, seed 8"}))
    shutil.copy(STORED / SEED8.format("ts_b_upper"), tmp_path / "replicate_seed8_fold_ts_b_upper.json")
    replicates = card.stored_experiments(tmp_path, cases, kind="replicate")
    assert list(replicates) == ["same recipe, seed 8"]
    row = {"setting": {"sampler": "ddpm", "steps": 10, "ensemble": 5, "largest_component": None},
           "dice": {"liver": 0.9, "kidney_left": None}, "mean_dice": 0.9, "seconds": 30.0, "cases": ["ts_b_upper"]}
    (tmp_path / "sweep_fold_ts_b_upper.json").write_text(json.dumps({"bundle": "runs/x/bundle", "rows": [row]}))
    folds = [read_report(STORED / SEED8.format(c)) for c in cases]
    lines = card.seed_and_sampling_section("0.9.0", folds, replicates, {}, card.stored_sweeps(tmp_path, cases),
                                           ["liver", "spleen", "stomach"], fold_seed=7)
    text = "\n".join(lines)
    assert "### Seed to seed: the v0.9.0 recipe trained 2 times" in text
    assert "| case | target | v0.9.0 fold (seed 7) | same recipe, seed 8 | range |" in text
    assert "| ts_b_upper_0000 | liver | 0.914 | 0.914 | 0.000 |" in text  # the same report twice: no spread
    assert card.fold_seed({"fold_a": {"seed": 7}, "fold_b": {"seed": 7}, "full": {"seed": 1}}) == 7
    assert card.fold_seed({"fold_a": {"seed": 7}, "fold_b": {"seed": 8}}) is None
    assert "### Sampling settings on the left-out patients" in text and "`runs/x/bundle`" in text
    assert "| ddpm, 10 steps, ensemble 5 | 0.900 | 0.900 | 30 |" in text
    assert card.seed_and_sampling_section("0.9.0", folds, {}, {}, {}, ["liver"]) == []  # nothing stored: no section
    rows = [{**row, "setting": {**row["setting"], "exclusive": flag}, "dice": {"liver": dice}}
            for flag, dice in ((False, 0.80), (True, 0.85))]
    (tmp_path / "sweep_exclusive_fold_ts_b_upper.json").write_text(json.dumps({"bundle": "runs/y/bundle", "rows": rows}))
    exclusive = card.stored_sweeps(tmp_path, cases, stem="sweep_exclusive")
    text = "\n".join(card.seed_and_sampling_section("0.9.0", folds, {}, {}, {}, ["liver"], exclusive=exclusive))
    assert "### Exclusive organs on the left-out patients" in text and "`runs/y/bundle`" in text
    assert "| ddpm, 10 steps, ensemble 5, overlapping organs | 0.800 | 0.800 | 30 |" in text
    assert "| ddpm, 10 steps, ensemble 5, exclusive organs | 0.850 | 0.850 | 30 |" in text
    assert "| case | target | ddpm 10/5 overlap | ddpm 10/5 excl |" in text and "| ts_b_upper | liver | 0.800 | 0.850 |" in text


def test_stored_curves_make_a_learning_curve_section(card: ModuleType, tmp_path: Path) -> None:
    from training.evaluation.evaluate import read_report

    cases = ["ts_a_torso", "ts_b_upper"]
    assert card.stored_curves(tmp_path, cases) == {}  # no index: no section
    (tmp_path / "curves.json").write_text(json.dumps({"long": "A longer fold", "none": "never scored"}))
    for step in (3000, 12000):
        shutil.copy(STORED / SEED8.format("ts_b_upper"), tmp_path / f"curve_long_at{step}_fold_ts_b_upper.json")
    curves = card.stored_curves(tmp_path, cases)
    assert list(curves) == ["A longer fold"] and sorted(curves["A longer fold"]) == [3000, 12000]
    runs = {"shipped folds": [read_report(STORED / SEED8.format(c)) for c in cases],
            "seed 9": [read_report(STORED / f"replicate_seed9_fold_{c}.json") for c in cases]}
    text = "\n".join(card.learning_curve_section(curves, runs, ["liver", "spleen"], "6000"))
    assert "### A longer fold" in text
    assert "| case | target | 3000 steps | 12000 steps | the recipe's 2 runs at 6000 steps |" in text
    assert "| ts_b_upper_0000 | liver | 0.914 | 0.914 | 0.914–0.924 |" in text  # the stored seed 8 and seed 9 livers
    assert "ts_a_torso" not in text  # only the fold that was scored


def test_unseen_patient_reports_are_read_from_the_store_with_portable_paths(card: ModuleType, tmp_path: Path) -> None:
    store, work = tmp_path / "store", tmp_path / "work"
    bundles = {"shipped": ("unseen_shipped_ct3slice", tmp_path / "no-bundle"), "gone": ("unseen_gone", tmp_path / "none")}
    assert card.unseen_patient(store, work, bundles, reuse=True) == {}  # nothing stored, nothing measured
    raw = json.loads((STORED / "unseen_shipped_ct3slice.json").read_text())
    raw["bundle"], raw["data"] = str(REPO / "model" / "bundles" / "demo"), str(REPO.parent / "shared" / "data" / "x")
    (work / "unseen_shipped_ct3slice").mkdir(parents=True)
    (work / "unseen_shipped_ct3slice" / "evaluation.json").write_text(json.dumps(raw))
    found = card.unseen_patient(store, work, bundles, reuse=True)
    assert list(found) == ["shipped"] and found["shipped"].results[0].target == "liver"
    kept = json.loads((store / "unseen_shipped_ct3slice.json").read_text())  # copied into the store, paths portable
    assert kept["bundle"] == "model/bundles/demo" and kept["data"] == "../shared/data/x"


def test_folds_of_record_name_an_experiment_that_replaces_the_recipes_folds(card: ModuleType, tmp_path: Path) -> None:
    from training.cards import card_sections as cs
    from training.evaluation.evaluate import read_report

    cases = ["ts_a_torso", "ts_b_upper"]
    recipe = [read_report(STORED / SEED8.format(c)) for c in cases]
    assert card.folds_of_record(tmp_path, cases, recipe) == (recipe, None)  # no index: the recipe's folds
    (tmp_path / "folds_of_record.json").write_text(json.dumps({"slug": "long", "why": "trained longer"}))
    shutil.copy(STORED / "replicate_seed9_fold_ts_b_upper.json", tmp_path / "experiment_long_fold_ts_b_upper.json")
    with pytest.raises(SystemExit, match="reports for \\['ts_b_upper_0000'\\]"):  # one fold alone cannot replace two
        card.folds_of_record(tmp_path, cases, recipe)
    shutil.copy(STORED / "replicate_seed9_fold_ts_a_torso.json", tmp_path / "experiment_long_fold_ts_a_torso.json")
    record, why = card.folds_of_record(tmp_path, cases, recipe)
    assert why == "trained longer" and [r.cases for r in record] == [("ts_a_torso_0000",), ("ts_b_upper_0000",)]
    liver = {case: v for (case, target), v in cs.dice_of(record).items() if target == "liver"}
    assert liver == {"ts_a_torso_0000": pytest.approx(0.4758, abs=5e-5), "ts_b_upper_0000": pytest.approx(0.9236, abs=5e-5)}
