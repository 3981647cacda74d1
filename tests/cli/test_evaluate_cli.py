"""`latentseg evaluate` as a real subprocess on a tiny phantom dataset with a random tiny bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LATENTSEG = Path(sys.executable).parent / "latentseg"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LATENTSEG), "evaluate", *args], capture_output=True, text=True, timeout=300)


def test_evaluate_writes_json_and_markdown(tmp_path: Path) -> None:
    from model.bundle.loaded import write_random_bundle
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", 2, 7, PhantomSpec(shape=(40, 40, 6), spacing=(9.0, 9.0, 12.0)))
    bundle = write_random_bundle(tmp_path / "bundle", seed=2)
    out = tmp_path / "report"
    result = run_cli("--bundle", str(bundle), "--data", str(data), "--steps", "2", "--ensemble", "2",
                     "--targets", "liver,kidney_left", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "| target | cases | Dice" in result.stdout
    report = json.loads((out / "evaluation.json").read_text())
    assert report["dataset"] == "latentseg_phantoms" and len(report["cases"]) == 2
    assert {s["target"] for s in report["summary"]} == {"liver", "kidney_left"}
    assert len(report["results"]) == 4
    assert all(0.0 <= r["dice"] <= 1.0 for r in report["results"])
    md = (out / "evaluation.md").read_text()
    assert "| liver | 2 |" in md and "| kidney_left |" in md
    # calibration per target and a reliability diagram; review scores per case and target
    assert "ECE near / all" in md and (out / "reliability.png").stat().st_size > 1000
    for s in report["summary"]:
        assert 0 <= s["ece"] <= 1 and 0 <= s["brier"] <= 1
    for r in report["results"]:
        assert isinstance(r["needs_review"], bool) and r["pred_volume_ml"] >= 0
        assert r["pairwise_dice"] is None or 0 <= r["pairwise_dice"] <= 1


def test_evaluate_reports_untrained_or_unannotated_targets_in_one_line(tmp_path: Path) -> None:
    from model.bundle.loaded import write_random_bundle
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", 1, 7, PhantomSpec(shape=(24, 24, 4), spacing=(12.0, 12.0, 16.0)))
    bundle = write_random_bundle(tmp_path / "bundle", seed=2)
    result = run_cli("--bundle", str(bundle), "--data", str(data), "--targets", "lung_left", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing to evaluate" in lines[0], result.stderr
    assert not (tmp_path / "r").exists()
