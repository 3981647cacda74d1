"""scripts/dicom_to_dataset.py: a DICOM series and its reference segmentation become a dataset case that
``latentseg evaluate`` reads, the labels resampled by geometry (not by slice index)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]
SHARED_SERIES = REPO.parent / "shared" / "data" / "dicom-ct3slice"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("dicom_to_dataset")


def _series(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A small CT series written as DICOM (LPS slices) and the labels on its grid (1 liver, 2 spleen)."""
    from model.io.dicom_seg import derive_ct_series, write_derived_ct_series
    from model.inference.preprocessing import Volume

    shape = (40, 36, 7)
    affine = np.array([[-0.9, 0, 0, 20.0], [0, -0.9, 0, 15.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 20, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[5:20, 4:25, 1:6] = 1
    labels[25:35, 10:20, 2:4] = 2
    hu[labels == 1] += 60
    write_derived_ct_series(derive_ct_series(Volume(data=hu, affine=affine)), tmp_path / "series")
    return tmp_path / "series", labels, affine


def test_a_label_map_on_another_grid_lands_on_the_series_voxel_for_voxel(script: ModuleType, tmp_path: Path) -> None:
    from model.targets.vocabulary import default_vocabulary
    from training.data import read_dataset

    series, labels, affine = _series(tmp_path)
    # the label map stored flipped left-right and with its slices reversed: only geometry can undo that
    flip = np.array([[-1, 0, 0, labels.shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, labels.shape[2] - 1], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(labels[::-1, :, ::-1].copy(), affine @ flip), tmp_path / "labels.nii.gz")
    out = tmp_path / "dataset"
    assert script.main([str(series), "--labels", str(tmp_path / "labels.nii.gz"), "--label", "1=liver",
                        "--label", "2=Spleen", "--case", "p1", "--out", str(out)]) == 0
    written = nib.load(out / "labels" / "p1.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)
    image = nib.load(out / "images" / "p1.nii.gz")
    assert image.shape == labels.shape and np.allclose(image.affine, affine, atol=1e-4)
    assert json.loads((out / "labelmap.json").read_text())["labels"] == {"1": "liver", "2": "spleen"}
    source = read_dataset(out, default_vocabulary())  # what evaluate and train read
    assert [c.image.name for c in source.cases] == ["p1.nii.gz"]
    assert dict(source.label_map.labels) == {1: "liver", 2: "spleen"}


def test_bad_input_is_refused_with_a_message(script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series, labels, affine = _series(tmp_path)
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "labels.nii.gz")
    out = tmp_path / "dataset"

    def refused(*extra: str) -> str:
        with pytest.raises(SystemExit) as stop:
            script.main([str(series), "--labels", str(tmp_path / "labels.nii.gz"), "--case", "p1", "--out", str(out), *extra])
        assert stop.value.code == 2
        return capsys.readouterr().err

    assert "needs --label VALUE=TARGET" in refused()
    assert "values [2] are in the label map but not named" in refused("--label", "1=liver")
    assert "'lever' is not a vocabulary target" in refused("--label", "1=lever", "--label", "2=spleen")
    assert "expected VALUE=TARGET" in refused("--label", "liver")
    assert not out.exists()  # nothing half-written
    assert script.main([str(series), "--labels", str(tmp_path / "labels.nii.gz"), "--case", "p1", "--out", str(out),
                        "--label", "1=liver", "--label", "2=spleen"]) == 0
    # a second case whose values disagree with the dataset's label map is refused
    assert "label 1 is already 'liver'" in refused("--label", "1=spleen", "--label", "2=liver")


@pytest.mark.skipif(not SHARED_SERIES.is_dir(), reason="real data not available: ../shared/data/dicom-ct3slice is absent")
def test_the_real_dicom_seg_and_its_nrrd_give_the_same_liver(script: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "ct3slice"
    assert script.main([str(SHARED_SERIES), "--labels", str(SHARED_SERIES / "liver.dcm"), "--case", "seg", "--out", str(out)]) == 0
    # the NRRD's slices run the other way from the DICOM files in name order: geometry, not index
    assert script.main([str(SHARED_SERIES), "--labels", str(SHARED_SERIES / "liver_seg.nrrd"), "--label", "1=liver",
                        "--case", "nrrd", "--out", str(out)]) == 0
    seg, nrrd = (np.asarray(nib.load(out / "labels" / f"{c}.nii.gz").dataobj) for c in ("seg", "nrrd"))
    assert seg.shape == (512, 512, 3) and seg.sum() > 100_000
    np.testing.assert_array_equal(seg, nrrd)
