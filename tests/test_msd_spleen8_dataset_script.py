"""scripts/msd_spleen8_dataset.py: the shared MSD spleen case rebuilt with its left-right axis corrected and five
organs labelled, as a plain dataset folder that training reads without a laterality warning."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

from model.bundle.config import tiny_config
from model.targets.vocabulary import default_vocabulary
from tests.conftest import load_script
from training.data import CaseFiles, body_midline_x, prepare_case, read_dataset

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "msd-spleen8"
needs_source = pytest.mark.skipif(not (SOURCE / "spleen_8_image.nii.gz").is_file(),
                                  reason=f"real data not available: {SOURCE} is absent (shared data lives beside the repo)")


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("msd_spleen8_dataset")


@needs_source
def test_rebuilt_case_has_the_organs_on_their_sides(script: ModuleType, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    out = script.build(SOURCE, tmp_path / "spleen8k")
    meta = json.loads((out / "labelmap.json").read_text())
    assert meta["labels"] == {"1": "spleen", "2": "kidney_left", "3": "liver", "4": "aorta", "5": "stomach"}
    assert (out / "LICENSE.txt").read_text() == (SOURCE / "license.txt").read_text()
    source_image = np.asarray(nib.load(str(SOURCE / "spleen_8_image.nii.gz")).dataobj)
    image = nib.load(str(out / "images" / "spleen_8.nii.gz"))
    np.testing.assert_array_equal(np.asarray(image.dataobj), source_image[::-1])  # flipped, nothing else
    source_spleen = np.asarray(nib.load(str(SOURCE / "spleen_8_label.nii.gz")).dataobj) == 1
    label_nii = nib.as_closest_canonical(nib.load(str(out / "labels" / "spleen_8.nii.gz")))
    labels = np.asarray(label_nii.dataobj)
    assert (labels == 1).sum() == source_spleen.sum()  # the manual spleen is kept whole
    body = np.asarray(nib.as_closest_canonical(image).dataobj) > -500
    midline = body_midline_x(body, label_nii.affine)
    assert midline is not None
    ml = float(np.prod(label_nii.header.get_zooms()[:3])) / 1000

    def side_and_volume(value: int) -> tuple[float, float]:
        ijk = np.argwhere(labels == value)
        return float(label_nii.affine[0, :3] @ ijk.mean(axis=0) + label_nii.affine[0, 3]) - midline, len(ijk) * ml

    spleen_x, spleen_ml = side_and_volume(1)
    kidney_x, kidney_ml = side_and_volume(2)
    liver_x, liver_ml = side_and_volume(3)
    aorta_x, aorta_ml = side_and_volume(4)
    stomach_x, stomach_ml = side_and_volume(5)
    # RAS+: the patient's right is +x. The aorta runs just left of the midline.
    assert spleen_x < -50 and kidney_x < -30 and stomach_x < -30 and liver_x > 30 and -30 < aorta_x < 0
    assert 100 < kidney_ml < 400 and 1200 < liver_ml < 3500 and 30 < aorta_ml < 250 and 50 < stomach_ml < 600
    # The aorta is enhanced blood, not the bone it lies on, and brighter than the liver parenchyma.
    image_ras = np.asarray(nib.as_closest_canonical(image).dataobj)
    assert 120 < float(np.median(image_ras[labels == 4])) < 400
    assert float(np.median(image_ras[labels == 3])) < float(np.median(image_ras[labels == 4]))
    # Training reads it as a plain dataset and finds nothing on the wrong side.
    vocabulary = default_vocabulary()
    source = read_dataset(out, vocabulary)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        case = prepare_case(source.cases[0], source.label_map, vocabulary, tiny_config().preprocess)
    assert "flipped" not in caplog.text
    assert set(case.present()) == {vocabulary.get(n).id for n in ("spleen", "kidney_left", "liver", "aorta", "stomach")}
    # ... whereas the source file as it is shipped is reported as mirrored.
    with caplog.at_level(logging.WARNING, logger="training.data"):
        prepare_case(CaseFiles(SOURCE / "spleen_8_image.nii.gz", SOURCE / "spleen_8_label.nii.gz"),
                     vocabulary.dataset("msd_task09_spleen"), vocabulary, tiny_config().preprocess)
    assert "spleen lies" in caplog.text and "flipped" in caplog.text


def test_a_folder_without_the_case_is_a_clear_cli_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "msd_spleen8_dataset.py"), "--source",
                           str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "spleen_8_image.nii.gz is missing" in proc.stderr and "Traceback" not in proc.stderr


def test_an_image_of_another_shape_is_refused(script: ModuleType, tmp_path: Path) -> None:
    for name in ("spleen_8_image.nii.gz", "spleen_8_label.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros((64, 64, 8), np.int16), np.eye(4)), str(tmp_path / name))
    with pytest.raises(script.SourceError, match="512 x 512 x 32"):
        script.build(tmp_path, tmp_path / "out")
