"""`latentseg export-onnx` and `latentseg segment --backend onnx`, as a user runs them (subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model.bundle.loaded import write_random_bundle

pytest.importorskip("onnxruntime")

LATENTSEG = Path(sys.executable).with_name("latentseg")


def latentseg(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([str(LATENTSEG), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_bundle(tmp_path_factory.mktemp("cli-onnx") / "bundle", seed=0)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = np.full((40, 36, 8), -1000, np.int16)
    data[6:-6, 6:-6, :] = np.random.default_rng(0).normal(40, 80, (28, 24, 8)).astype(np.int16)
    affine = np.array([[-3.0, 0, 0, 60], [0, -3.5, 0, 70], [0, 0, 5.0, -20], [0, 0, 0, 1]])
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="module")
def exported(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "onnx"
    proc = latentseg("export-onnx", "--bundle", str(bundle), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    return out


def test_export_writes_three_graphs_and_the_manifest(exported: Path, bundle: Path) -> None:
    manifest = json.loads((exported / "onnx.json").read_text())
    assert manifest["weights_sha256"] == json.loads((bundle / "bundle.json").read_text())["weights_sha256"]
    assert sorted(p.name for p in exported.iterdir()) == ["denoiser.onnx", "image_encoder.onnx", "mask_decoder.onnx", "onnx.json"]


def test_segment_with_onnx_matches_torch(exported: Path, bundle: Path, ct: Path, tmp_path: Path) -> None:
    common = ["--targets", "liver", "--ensemble", "2", "--steps", "2", "--seed", "1", "--bundle", str(bundle),
              "--quiet", "--threads", "2"]
    outs = {}
    for backend in ("torch", "onnx"):
        outs[backend] = tmp_path / backend
        extra = ["--onnx-dir", str(exported)] if backend == "onnx" else ["--device", "cpu"]
        proc = latentseg("segment", str(ct), "--out", str(outs[backend]), "--backend", backend, *common, *extra)
        assert proc.returncode == 0, proc.stderr
        assert [Path(line).name for line in proc.stdout.split()] == [
            "liver_mean.nii.gz", "liver_variance.nii.gz", "labels.nii.gz", "labels.json", "statistics.json"
        ]
    for kind in ("mean", "variance"):
        a = np.asarray(nib.load(str(outs["torch"] / f"liver_{kind}.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(outs["onnx"] / f"liver_{kind}.nii.gz")).dataobj)
        assert a.shape == (40, 36, 8) and a.max() > 0.05
        assert np.abs(a - b).max() < 1e-3


def test_segment_refuses_a_stale_export(exported: Path, ct: Path, tmp_path: Path) -> None:
    other = write_random_bundle(tmp_path / "retrained", seed=5)
    shutil.copytree(exported, other / "onnx")  # an export of different weights, in the default place
    proc = latentseg("segment", str(ct), "--targets", "liver", "--out", str(tmp_path / "out"),
                     "--backend", "onnx", "--bundle", str(other), "--quiet")
    assert proc.returncode == 2
    assert "stale ONNX export" in proc.stderr and "export-onnx" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_segment_onnx_without_export_and_export_of_a_non_bundle(tmp_path: Path, ct: Path, bundle: Path) -> None:
    proc = latentseg("segment", str(ct), "--targets", "liver", "--out", str(tmp_path / "out"),
                     "--backend", "onnx", "--bundle", str(bundle), "--quiet")
    assert proc.returncode == 2 and "no ONNX export" in proc.stderr
    proc = latentseg("export-onnx", "--bundle", str(tmp_path), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "not a latentseg bundle" in proc.stderr
    assert not (tmp_path / "x").exists()
