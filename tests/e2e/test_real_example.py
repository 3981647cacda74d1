"""The shipped bundle on real CT: a regression to a phantom-only model must fail CI (issue 16).

`latentseg evaluate` (the public entry point) scores the shipped bundle on the real example scan that
ships in the repository (examples/ts_a_torso), and on the shared real scans when ../shared/data is
present. The shipped bundle was trained on these patients, so this is a floor against regressions
(v0.6, trained on phantoms, scored 0.00 on both kidneys here), not a measure of accuracy on new
patients: MODEL_CARD.md has the left-out-patient table for that.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main as latentseg
from tests.conftest import trained_demo_bundle

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ts_a_torso"
SHARED_TS = REPO.parent / "shared" / "data" / "ts-examples"
FLOOR = 0.7
# Issue 16 asks 0.7 for the liver and both kidneys (v0.7 missed it for the left kidney: 0.689; v0.8 and
# later score above it on this case, which is their training data).
FLOORS = {"liver": FLOOR, "kidney_right": FLOOR, "kidney_left": FLOOR}


def _evaluate(data: Path, targets: str, out: Path, *cases: str) -> dict[str, dict]:
    args = ["evaluate", "--data", str(data), "--targets", targets, "--out", str(out), "--device", "cpu"]
    if cases:
        args += ["--cases", *cases]
    assert latentseg(args) == 0
    report = json.loads((out / "evaluation.json").read_text())
    return {s["target"]: s for s in report["summary"]}


@pytest.fixture(scope="module")
def shipped() -> Path:
    bundle = trained_demo_bundle()
    if bundle is None:
        pytest.skip("no trained bundle in model/bundles/demo")
    return bundle


def test_shipped_bundle_finds_liver_and_kidneys_on_the_shipped_real_case(shipped: Path, tmp_path: Path) -> None:
    summary = _evaluate(EXAMPLE, "liver,kidney_left,kidney_right", tmp_path / "example")
    for target, floor in FLOORS.items():
        dice = summary[target]["dice_mean"]
        assert summary[target]["cases"] == 1 and dice is not None
        assert dice > floor, f"{target}: Dice {dice:.3f} on the real example case (floor {floor})"


def test_shipped_bundle_on_the_shared_real_scans(shipped: Path, tmp_path: Path) -> None:
    if not (SHARED_TS / "dataset.json").is_file():
        pytest.skip(f"real data not available: {SHARED_TS} is absent (shared data lives beside the repo)")
    # ts_b_upper: an upper-abdomen slab from another patient at 0.98 x 0.98 x 2 mm (no kidneys in it).
    summary = _evaluate(SHARED_TS, "liver,spleen", tmp_path / "ts_b", "ts_b_upper")
    for target in ("liver", "spleen"):
        dice = summary[target]["dice_mean"]
        assert dice is not None and dice > FLOOR, f"{target}: Dice {dice} on ts_b_upper (floor {FLOOR})"


def test_shipped_bundle_refuses_a_target_it_does_not_serve(shipped: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from model.bundle.manifest import read_manifest

    manifest = read_manifest(shipped)
    unserved = [t for t in manifest.trained_targets if t not in manifest.served_targets]
    if not unserved:
        pytest.skip("the shipped bundle serves every target it was trained for")
    image = EXAMPLE / "imagesTr" / "ts_a_torso_0000.nii.gz"
    code = latentseg(["segment", str(image), "--targets", unserved[0], "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"does not serve {unserved[0]}" in err and "left-out validation Dice" in err
    assert not (tmp_path / "out" / f"{unserved[0]}_mean.nii.gz").exists()


SHARED_CT20 = REPO.parent / "shared" / "data" / "dicom-ct20"


def test_compressed_dicom_series_segments_like_its_nifti(shipped: Path, tmp_path: Path) -> None:
    """ts_b_upper's original DICOM series (JPEG 2000 lossless) through `latentseg segment`: same grid, same
    masks as the NIfTI of the same scan (a flipped or shifted DICOM geometry would break both checks)."""
    import nibabel as nib
    import numpy as np

    nifti = SHARED_TS / "imagesTr" / "ts_b_upper_0000.nii.gz"
    if not SHARED_CT20.is_dir() or not nifti.is_file():
        pytest.skip(f"real data not available: {SHARED_CT20} or {nifti} is absent (shared data lives beside the repo)")
    common = ["--targets", "liver", "--steps", "3", "--ensemble", "2", "--seed", "0", "--quiet"]
    assert latentseg(["segment", str(SHARED_CT20), "--out", str(tmp_path / "dicom"), *common]) == 0
    assert latentseg(["segment", str(nifti), "--out", str(tmp_path / "nifti"), *common]) == 0
    from_dicom = nib.load(tmp_path / "dicom" / "liver_mean.nii.gz")
    from_nifti = nib.load(tmp_path / "nifti" / "liver_mean.nii.gz")
    assert from_dicom.shape == from_nifti.shape
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-3)
    a, b = from_dicom.get_fdata() > 0.5, from_nifti.get_fdata() > 0.5
    agreement = 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)
    assert agreement > 0.98, f"DICOM and NIfTI of one scan disagree: Dice {agreement:.3f}"
    reference = np.asarray(nib.load(SHARED_TS / "labelsTr" / "ts_b_upper.nii.gz").dataobj) == 5  # liver
    dice = 2 * np.logical_and(a, reference).sum() / (a.sum() + reference.sum())
    assert dice > FLOOR, f"liver Dice {dice:.3f} on the DICOM series (floor {FLOOR})"
