"""``GET /targets`` through the ASGI app against ``latentseg targets --json`` and the vocabulary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fastapi.testclient import TestClient

from model.targets.vocabulary import default_vocabulary
from service.main import create_app
from service.settings import ServiceSettings
from tests.conftest import LATENTSEG, clean_env


def _api_targets(tmp_path: Path) -> dict:
    # Not entered as a context manager: no lifespan, so no embedded worker (and no torch) starts.
    client = TestClient(create_app(ServiceSettings(storage_dir=tmp_path / "storage")))
    response = client.get("/targets")
    assert response.status_code == 200
    return response.json()


def test_targets_api_agrees_with_the_cli(tmp_path: Path) -> None:
    api = _api_targets(tmp_path)
    cli = subprocess.run([LATENTSEG, "targets", "--json"], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    listed = json.loads(cli.stdout)
    assert api["vocabulary_sha256"] == listed["vocabulary_sha256"]
    assert [t["name"] for t in api["targets"]] == [t["name"] for t in listed["targets"]]
    for ours, theirs in zip(api["targets"], listed["targets"], strict=True):
        assert {key: ours[key] for key in theirs} == theirs  # every field the CLI prints, equal


def test_targets_carry_codes_category_and_side_from_the_vocabulary(tmp_path: Path) -> None:
    rows = {t["name"]: t for t in _api_targets(tmp_path)["targets"]}
    vocabulary = default_vocabulary()
    assert set(rows) == set(vocabulary.names())
    for target in vocabulary:
        row = rows[target.name]
        assert row["id"] == target.id and row["kind"] == target.kind.value and row["side"] == target.side
        assert row["category"] == target.category.to_dict()
        assert row["snomed"] == (None if target.code is None else target.code.to_dict())
    kidney = rows["kidney_left"]
    assert kidney["side"] == "left" and kidney["snomed"]["scheme"] == "SCT" and kidney["snomed"]["value"] == "64033007"
    assert rows["liver"]["category"]["meaning"] == "Anatomical Structure"


def test_targets_say_which_are_one_connected_piece(tmp_path: Path) -> None:
    rows = {t["name"]: t for t in _api_targets(tmp_path)["targets"]}
    assert rows["liver"]["connected"] and rows["kidney_left"]["connected"]
    assert not rows["liver_tumor"]["connected"] and not rows["colon"]["connected"]
    assert {n for n, r in rows.items() if r["connected"]} == {t.name for t in default_vocabulary() if t.connected}
