from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LATENTSEG = Path(sys.executable).with_name("latentseg")


def latentseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LATENTSEG), *args], capture_output=True, text=True, timeout=120)


def test_targets_json_lists_the_vocabulary() -> None:
    proc = latentseg("targets", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    targets = data["targets"]
    assert len(targets) == 32
    by_name = {t["name"]: t for t in targets}
    assert {"ivc", "postcava"} <= set(by_name["inferior_vena_cava"]["synonyms"])
    assert by_name["liver"]["kind"] == "organ"
    assert by_name["kidney_cyst"]["kind"] != "organ"
    assert len({t["id"] for t in targets}) == 32
    assert all(isinstance(t["synonyms"], list) for t in targets)
    assert len(data["vocabulary_sha256"]) == 64


def test_targets_table_is_readable() -> None:
    proc = latentseg("targets")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 33  # header + one line per target
    assert any("inferior_vena_cava" in line and "ivc" in line for line in lines)
