"""training/cards/phantom_lineage.py: the training lineage of a fine-tuned bundle (every run in the phantom card)."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def card() -> ModuleType:
    return importlib.import_module("training.cards.phantom_lineage")


def write_manifest(folder: Path, version: str, parent: Path | None) -> dict:
    folder.mkdir(parents=True)
    meta = {
        "name": "latentseg-demo",
        "version": version,
        "provenance": {"init_from": None if parent is None else {
            "path": str(parent), "version": json.loads((parent / "bundle.json").read_text())["version"]
            if (parent / "bundle.json").is_file() else "?",
        }},
    }
    (folder / "bundle.json").write_text(json.dumps(meta))
    return meta


def test_lineage_follows_init_from_to_the_first_run(card: ModuleType, tmp_path: Path) -> None:
    write_manifest(tmp_path / "v1", "0.1.0", None)
    write_manifest(tmp_path / "v2", "0.2.0", tmp_path / "v1")
    last = write_manifest(tmp_path / "v3", "0.3.0", tmp_path / "v2")
    assert [m["version"] for m in card.lineage(last)] == ["0.1.0", "0.2.0"]
    configs = card.demo_configs()
    line = card.phantom_data_line([*card.lineage(last), last], configs)
    assert "runs/demo/data/phantoms --cases 36 --seed 1000` (run 1)" in line
    assert "phantoms160 --cases 160 --seed 1000` (runs 2, 3;" in line
    assert "phantoms_s2000 --cases 160 --seed 2000` (run 3)" in line


def test_a_missing_parent_ends_the_lineage_with_a_warning(
    card: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    last = write_manifest(tmp_path / "v2", "0.2.0", tmp_path / "gone")
    with caplog.at_level(logging.WARNING):
        assert card.lineage(last) == []
    assert "gone" in caplog.text


def test_each_demo_config_has_its_own_version(card: ModuleType) -> None:
    configs = card.demo_configs()
    assert {c["file"] for c in configs.values()} == {
        f"training/configs/{name}" for name in (
            "demo.yaml", "demo_finetune.yaml", "demo_pixels.yaml", "demo_context.yaml", "demo_context_long.yaml",
            "demo_stem.yaml",
        )
    }
    assert configs["0.3.0"]["out"] == "runs/demo/pixels"
    assert configs["0.4.0"]["out"] == "runs/demo/context"
    assert configs["0.5.0"]["out"] == "runs/demo/context_long"
    assert configs["0.6.0"]["out"] == "runs/demo/stem"


def test_a_bundle_fine_tuned_in_place_does_not_loop_on_itself(
    card: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """v0.7 was fine-tuned from v0.6 in model/bundles/demo: its init_from path now holds v0.7 itself."""
    write_manifest(tmp_path / "v1", "0.1.0", None)
    last = write_manifest(tmp_path / "demo", "0.6.0", tmp_path / "v1")
    last["version"] = "0.7.0"
    last["provenance"]["init_from"] = {"path": str(tmp_path / "demo"), "version": "0.6.0"}
    (tmp_path / "demo" / "bundle.json").write_text(json.dumps(last))
    with caplog.at_level(logging.WARNING):
        assert card.lineage(last) == []
    assert "no longer at" in caplog.text
