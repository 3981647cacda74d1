"""`latentseg segment` end to end, as a user runs it (subprocess), with a random tiny bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model.bundle.loaded import write_random_bundle

LATENTSEG = Path(sys.executable).with_name("latentseg")
SPLEEN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "msd-spleen8" / "spleen_8_image.nii.gz"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_bundle(tmp_path_factory.mktemp("cli") / "bundle", seed=0)


def latentseg(*args: str, bundle: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    extra = ["--bundle", str(bundle), "--device", "cpu"] if bundle is not None else []
    return subprocess.run([str(LATENTSEG), *args, *extra], capture_output=True, text=True, timeout=300, env=env)


def check_outputs(out: Path, source: Path, targets: list[str]) -> None:
    src = nib.load(str(source))
    expected = {f"{t}_{k}.nii.gz" for t in targets for k in ("mean", "variance")} | {"labels.nii.gz", "labels.json",
                                                                                       "statistics.json"}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected - {"labels.json", "statistics.json"}:
        img = nib.load(str(out / name))
        assert img.shape == src.shape[:3]
        assert np.array_equal(img.affine, src.affine)
    for t in targets:
        mean = np.asarray(nib.load(str(out / f"{t}_mean.nii.gz")).dataobj)
        var = np.asarray(nib.load(str(out / f"{t}_variance.nii.gz")).dataobj)
        assert mean.min() >= 0 and mean.max() <= 1 and var.min() >= 0
    assert nib.load(str(out / "labels.nii.gz")).get_data_dtype() == np.uint8
    assert sorted(json.loads((out / "labels.json").read_text()).values()) == sorted(targets)


def test_segment_generated_volume(bundle: Path, tmp_path: Path) -> None:
    data = np.full((40, 36, 10), -1000, np.int16)
    data[6:-6, 6:-6, :] = 50
    affine = np.array([[-3.0, 0, 0, 60], [0, -3.5, 0, 70], [0, 0, 5.0, -20], [0, 0, 0, 1]])
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(source))
    out = tmp_path / "out"
    proc = latentseg("segment", str(source), "--targets", "liver,ivc", "--out", str(out),
                     "--steps", "2", "--ensemble", "2", "--seed", "3", "--quiet", bundle=bundle)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 7  # one written path per line
    check_outputs(out, source, ["liver", "inferior_vena_cava"])
    # statistics.json agrees with the written maps and the CT (docs/statistics.md)
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["ensemble"] == 2 and set(stats["targets"]) == {"liver", "inferior_vena_cava"}
    for name, entry in stats["targets"].items():
        mask = np.asarray(nib.load(str(out / f"{name}_mean.nii.gz")).dataobj) > 0.5
        assert entry["voxel_count"] == int(mask.sum())
        assert entry["volume_ml"] == pytest.approx(mask.sum() * 3.0 * 3.5 * 5.0 / 1000, abs=1e-3)
        if mask.any():
            assert entry["hu_mean"] == pytest.approx(float(data[mask].mean()), abs=0.1)
        assert entry["ensemble_volume_ml"]["members"] == 2 and isinstance(entry["needs_review"], bool)
    again = tmp_path / "again"
    proc = latentseg("segment", str(source), "--targets", "liver", "--out", str(again), "--steps", "2",
                     "--ensemble", "2", "--quiet", "--no-statistics", bundle=bundle)
    assert proc.returncode == 0, proc.stderr
    assert not (again / "statistics.json").exists()


def test_segment_real_spleen_case(bundle: Path, tmp_path: Path) -> None:
    if not SPLEEN.is_file():
        pytest.skip(f"real data not available: {SPLEEN} is absent (shared data lives beside the repo)")
    out = tmp_path / "out"
    proc = latentseg("segment", str(SPLEEN), "--targets", "spleen", "--out", str(out),
                     "--steps", "2", "--ensemble", "2", "--quiet", bundle=bundle)
    assert proc.returncode == 0, proc.stderr
    check_outputs(out, SPLEEN, ["spleen"])


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_missing_file(bundle: Path, tmp_path: Path) -> None:
    proc = latentseg("segment", str(tmp_path / "nope.nii.gz"), "--targets", "liver", "--out", str(tmp_path / "o"),
                     bundle=bundle)
    assert_one_line_error(proc, "nope.nii.gz", "no such file")
    assert not (tmp_path / "o").exists()


def test_not_nifti(bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "scan.nii.gz"
    bad.write_text("this is not an image\n")
    proc = latentseg("segment", str(bad), "--targets", "liver", "--out", str(tmp_path / "o"), bundle=bundle)
    assert_one_line_error(proc, "scan.nii.gz", "not a NIfTI")


def test_unknown_target_names_the_valid_ones(bundle: Path, tmp_path: Path) -> None:
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(src))
    proc = latentseg("segment", str(src), "--targets", "liver,livr", "--out", str(tmp_path / "o"), bundle=bundle)
    line = assert_one_line_error(proc, "'livr'", "Valid targets", "spleen", "kidney_cyst")
    assert "liver" in line


def test_2d_image(bundle: Path, tmp_path: Path) -> None:
    src = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), str(src))
    proc = latentseg("segment", str(src), "--targets", "liver", "--out", str(tmp_path / "o"), bundle=bundle)
    assert_one_line_error(proc, "3-D")


def test_bad_bundle_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(src))
    proc = latentseg("segment", str(src), "--targets", "liver", "--out", str(tmp_path / "o"),
                     bundle=tmp_path / "no-bundle")
    assert_one_line_error(proc, "no-bundle")


def _components(mask: np.ndarray) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask, structure=np.ones((3, 3, 3), bool))[1])


def test_largest_component_flag_on_and_off(bundle: Path, tmp_path: Path) -> None:
    data = np.full((44, 30, 6), -1000, np.int16)  # two bodies of tissue, far apart in air
    rng = np.random.default_rng(3)
    data[3:15, 5:25] = rng.normal(40, 60, (12, 20, 6))
    data[29:41, 5:25] = rng.normal(40, 60, (12, 20, 6))
    source = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-4.0, -4.0, 4.0, 1.0])), str(source))
    liver = {}
    for flag in ("--largest-component", "--no-largest-component"):
        out = tmp_path / flag.strip("-")
        proc = latentseg("segment", str(source), "--targets", "liver", "--out", str(out), "--steps", "2",
                         "--ensemble", "2", "--seed", "0", "--quiet", flag, bundle=bundle)
        assert proc.returncode == 0, proc.stderr
        liver[flag] = np.asarray(nib.load(str(out / "liver_mean.nii.gz")).dataobj) > 0.5
    assert _components(liver["--no-largest-component"]) > 1  # the random model speckles
    assert _components(liver["--largest-component"]) == 1
    assert not (liver["--largest-component"] & ~liver["--no-largest-component"]).any()  # only removes


def test_exclusive_flag_leaves_one_organ_per_voxel(bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = np.full((36, 30, 6), -1000, np.int16)
    data[4:-4, 4:-4] = rng.normal(40, 60, (28, 22, 6))
    source = tmp_path / "body.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-4.0, -4.0, 4.0, 1.0])), str(source))
    claims = {}
    for flag in ("--exclusive", "--no-exclusive"):
        out = tmp_path / flag.strip("-")
        proc = latentseg("segment", str(source), "--targets", "liver,spleen,stomach", "--out", str(out), "--steps", "2",
                         "--ensemble", "2", "--seed", "0", "--quiet", "--no-largest-component", flag, bundle=bundle)
        assert proc.returncode == 0, proc.stderr
        claims[flag] = sum((np.asarray(nib.load(str(out / f"{name}_mean.nii.gz")).dataobj) > 0.5).astype(int)
                           for name in ("liver", "spleen", "stomach"))
    assert int((claims["--no-exclusive"] > 1).sum()) > 0  # the random model's organs overlap
    assert int((claims["--exclusive"] > 1).sum()) == 0
