"""`latentseg phantoms` as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib

LATENTSEG = Path(sys.executable).parent / "latentseg"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LATENTSEG), "phantoms", *args], capture_output=True, text=True, timeout=120)


def test_writes_n_cases_and_prints_one_line_each(tmp_path: Path) -> None:
    out = tmp_path / "phantoms"
    result = run_cli("--out", str(out), "--cases", "3", "--seed", "9", "--shape", "48", "40", "12",
                     "--spacing", "8", "8", "12", "--orientation", "las")
    assert result.returncode == 0, result.stderr
    case_lines = [line for line in result.stdout.splitlines() if line.startswith("case ")]
    assert len(case_lines) == 3
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3
    for case in meta["training"]:
        image = nib.load(out / case["image"])
        assert image.shape == (48, 40, 12)
        assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
        assert (out / case["label"]).is_file()


def test_bad_argument_fails_with_one_clear_line(tmp_path: Path) -> None:
    result = run_cli("--out", str(tmp_path / "x"), "--cases", "1", "--orientation", "XYZ")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "orientation" in lines[0], result.stderr
    assert not (tmp_path / "x").exists()


def test_zero_cases_is_a_user_error(tmp_path: Path) -> None:
    result = run_cli("--out", str(tmp_path / "x"), "--cases", "0")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--cases" in result.stderr
