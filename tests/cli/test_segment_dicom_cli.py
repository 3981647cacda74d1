"""`latentseg segment` with DICOM in, DICOM-SEG and preview out, and plain-word targets (subprocess).

Runs on the shared real 3-slice CT series (skipped with a reason when it is absent) and on a
generated NIfTI, with a random tiny bundle: outputs are checked for geometry and agreement
between files, not for segmentation quality.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from model.bundle.loaded import write_random_bundle
from model.io.dicom_io import read_dicom_series

LATENTSEG = Path(sys.executable).with_name("latentseg")
SERIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom-ct3slice"
CT_FILES = sorted(SERIES.glob("ct-3slice_*.dcm"))
needs_series = pytest.mark.skipif(
    len(CT_FILES) != 3, reason=f"real data not available: {SERIES} is absent (shared data lives beside the repo)"
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_bundle(tmp_path_factory.mktemp("cli-dicom") / "bundle", seed=0)


def latentseg(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [str(LATENTSEG), "segment", *args, "--bundle", str(bundle), "--device", "cpu",
           "--steps", "2", "--ensemble", "2", "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def one_line_error(bundle: Path, capsys: pytest.CaptureFixture[str], *args: str, expect: tuple[str, ...]) -> None:
    """User errors fail before any sampling: run them in-process through the CLI's own entry point."""
    from cli.main import main

    code = main(["segment", *args, "--bundle", str(bundle), "--device", "cpu", "--quiet"])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in expect:
        assert fragment in lines[0], lines[0]


@needs_series
def test_dicom_folder_in_binary_seg_and_preview_out(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # The shared folder also holds a SEG, NRRD labels and text files: they are skipped.
    proc = latentseg(bundle, str(SERIES), "--targets", "liver, left kidney", "--out", str(out), "--dicom-seg", "--preview")
    assert proc.returncode == 0, proc.stderr
    printed = [Path(line) for line in proc.stdout.strip().splitlines()]
    assert out / "segmentation.dcm" in printed and out / "preview.png" in printed
    assert json.loads((out / "labels.json").read_text()) == {"6": "liver", "3": "kidney_left"}

    series = read_dicom_series(SERIES)
    labels_img = nib.load(out / "labels.nii.gz")
    np.testing.assert_allclose(labels_img.affine, series.volume.affine, atol=1e-4)  # RAS+ of the series
    labels = np.asarray(labels_img.dataobj)
    assert labels.shape == (512, 512, 3)

    seg = hd.seg.segread(out / "segmentation.dcm")
    frames = seg.get_pixels_by_source_instance(list(series.info.sop_instance_uids))
    for s, (target_id, name) in enumerate(((6, "liver"), (3, "kidney_left"))):
        assert seg.get_segment_description(s + 1).tracking_id == name
        np.testing.assert_array_equal(frames[..., s].astype(bool), (labels == target_id).transpose(2, 1, 0))
    ds = pydicom.dcmread(out / "segmentation.dcm")
    assert ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.info.series_instance_uid
    assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "latentseg"

    picture = Image.open(out / "preview.png")
    assert picture.format == "PNG" and picture.width >= 320 and picture.height > 100


@needs_series
def test_zip_in_fractional_seg_out(bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in CT_FILES:
            zf.write(path, arcname=f"study/series/{path.name}")
    out = tmp_path / "out"
    proc = latentseg(bundle, str(archive), "--targets", "tumour of the pancreas", "--out", str(out), "--fractional")
    assert proc.returncode == 0, proc.stderr
    mean = np.asarray(nib.load(out / "pancreas_tumor_mean.nii.gz").dataobj)
    series = read_dicom_series(archive)
    frames = hd.seg.segread(out / "segmentation.dcm").get_pixels_by_source_instance(list(series.info.sop_instance_uids))
    assert pydicom.dcmread(out / "segmentation.dcm").SegmentationType == "FRACTIONAL"
    np.testing.assert_allclose(frames[..., 0], mean.transpose(2, 1, 0), atol=0.5 / 255 + 1e-6)


def test_nifti_in_seg_with_a_derived_ct_series(bundle: Path, tmp_path: Path) -> None:
    data = np.full((40, 36, 6), -1000, np.int16)
    data[6:-6, 6:-6, :] = 50
    affine = np.array([[-3.0, 0, 0, 60], [0, -3.5, 0, 70], [0, 0, 5.0, -20], [0, 0, 0, 1]])
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(source))
    out = tmp_path / "out"
    proc = latentseg(bundle, str(source), "--targets", "spleen", "--out", str(out), "--dicom-seg")
    assert proc.returncode == 0, proc.stderr
    derived = read_dicom_series(out / "dicom_ct")
    assert derived.volume.shape == (40, 36, 6)
    np.testing.assert_allclose(derived.volume.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(derived.volume.data, data)
    labels = np.asarray(nib.load(out / "labels.nii.gz").dataobj)
    frames = hd.seg.segread(out / "segmentation.dcm").get_pixels_by_source_instance(list(derived.info.sop_instance_uids))
    np.testing.assert_array_equal(frames[..., 0].astype(bool), (labels == 1).transpose(2, 1, 0))


@needs_series
def test_dicom_input_errors_are_one_line(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(CT_FILES[0], one / CT_FILES[0].name)
    one_line_error(bundle, capsys, str(one), "--targets", "liver", "--out", str(tmp_path / "o1"), expect=("single slice",))

    two = tmp_path / "two"
    two.mkdir()
    for path in CT_FILES:
        shutil.copy(path, two / path.name)
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.3.4.5"
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(two / f"copy_{path.name}")
    one_line_error(
        bundle, capsys, str(two), "--targets", "liver", "--out", str(tmp_path / "o2"), expect=("2 series", "1.2.3.4.5")
    )
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_ambiguous_plain_word_target_is_one_line(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(source))
    one_line_error(
        bundle, capsys, str(source), "--targets", "liver, kidney", "--out", str(tmp_path / "o"),
        expect=("'kidney'", "without a side", "kidney_left", "kidney_right"),
    )
