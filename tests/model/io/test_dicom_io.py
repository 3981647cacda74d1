"""Reading DICOM series (model.io.dicom_io) on the shared real 3-slice CT series and altered copies of it.

The series' files in name order are *descending* z (README): geometry, not names, must decide
the order. Every refusal is checked on a copy of the real files altered with pydicom.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from model.io.dicom_io import DicomLimits, extract_zip, inspect_dicom_series, is_dicom_input, read_dicom_series
from model.errors import InputError

SERIES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dicom-ct3slice"
CT_FILES = sorted(SERIES.glob("ct-3slice_*.dcm"))


@pytest.fixture(scope="module", autouse=True)
def _needs_shared_series() -> None:
    if len(CT_FILES) != 3:
        pytest.skip(f"real data not available: {SERIES} is absent (shared data lives beside the repo)")


def lps_to_ras(point: np.ndarray) -> np.ndarray:
    return np.array([-point[0], -point[1], point[2]])


def copy_series(dest: Path, files: list[Path] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for path in files or CT_FILES:
        shutil.copy(path, dest / path.name)
    return dest


def rewrite(path: Path, **changes: object) -> None:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def test_real_series_geometry_matches_the_headers() -> None:
    series = read_dicom_series(SERIES)  # the folder also holds liver.dcm (a SEG), NRRD, JSON and text files
    headers = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in CT_FILES)}
    assert series.volume.shape == (512, 512, 3)
    assert series.info.series_instance_uid == next(iter(headers.values())).SeriesInstanceUID
    assert set(series.info.sop_instance_uids) == set(headers)
    # Names are in descending z; geometry puts them ascending along the slice normal (+z here).
    assert series.info.file_names == ("ct-3slice_03.dcm", "ct-3slice_02.dcm", "ct-3slice_01.dcm")
    affine = series.volume.affine
    assert nib.aff2axcodes(affine) == ("L", "P", "S")  # DICOM rows/columns are LPS
    for k, uid in enumerate(series.info.sop_instance_uids):
        ds = headers[uid]
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose((affine @ [0, 0, k, 1])[:3], lps_to_ras(position), atol=1e-4)
        row, col = np.array([float(v) for v in ds.ImageOrientationPatient[:3]]), np.array(
            [float(v) for v in ds.ImageOrientationPatient[3:]]
        )
        dr, dc = (float(v) for v in ds.PixelSpacing)
        # voxel (i, j) = column i, row j: +i walks the row direction, +j the column direction
        np.testing.assert_allclose(affine[:3, 0], lps_to_ras(row * dc), atol=1e-6)
        np.testing.assert_allclose(affine[:3, 1], lps_to_ras(col * dr), atol=1e-6)
        expected_hu = ds.pixel_array.T.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(series.volume.data[:, :, k], expected_hu)
    np.testing.assert_allclose(series.info.spacing, (0.810547, 0.810547, 1.0), atol=1e-5)
    assert series.volume.data.min() == -3024.0  # outside the reconstruction circle (README)
    assert all("PixelData" not in ds for ds in series.headers)


def test_agrees_with_simpleitk() -> None:
    sitk = pytest.importorskip("SimpleITK")
    series = read_dicom_series(SERIES)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SERIES), series.info.series_instance_uid))
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), series.volume.data)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ lps, series.volume.affine, atol=1e-4)


def test_zip_gives_the_same_volume_and_extracts_safely(tmp_path: Path) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, path in enumerate(CT_FILES):
            zf.write(path, arcname=["../../escape.dcm", "/abs/slice.dcm", "deep/nested/x.dcm"][i])
        zf.write(SERIES / "liver.dcm", arcname="liver.dcm")  # a SEG travelling with the series: skipped
        zf.writestr("__MACOSX/._junk", b"\x00\x05\x16\x07 not dicom")
    assert is_dicom_input(archive)
    from_zip = read_dicom_series(archive)
    from_folder = read_dicom_series(SERIES)
    np.testing.assert_array_equal(from_zip.volume.data, from_folder.volume.data)
    np.testing.assert_array_equal(from_zip.volume.affine, from_folder.volume.affine)
    assert from_zip.info.sop_instance_uids == from_folder.info.sop_instance_uids
    # member paths are never used: everything lands directly in the destination
    dest = tmp_path / "dest"
    dest.mkdir()
    written = extract_zip(archive, dest)
    assert all(p.parent == dest for p in written) and len(written) == 5
    assert not (tmp_path / "escape.dcm").exists() and not Path("/abs/slice.dcm").exists()
    assert inspect_dicom_series(archive).shape == (512, 512, 3)


def test_zip_caps_are_counted_on_inflated_bytes(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\x00" * (4 * 1024 * 1024))
    assert archive.stat().st_size < 64 * 1024
    with pytest.raises(InputError, match="inflates to"):
        read_dicom_series(archive, DicomLimits(max_total_bytes=1024 * 1024))
    with pytest.raises(InputError, match="at most 2"):
        extract_zip(_many_members(tmp_path / "many.zip", 3), tmp_path, DicomLimits(max_files=2))
    not_zip = tmp_path / "broken.zip"
    not_zip.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError):
        read_dicom_series(not_zip)


def _many_members(path: Path, count: int) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(count):
            zf.writestr(f"{i}.dcm", b"x")
    return path


def test_single_slice_is_refused(tmp_path: Path) -> None:
    folder = copy_series(tmp_path / "one", CT_FILES[:1])
    with pytest.raises(InputError, match="single slice"):
        read_dicom_series(folder)
    with pytest.raises(InputError, match="single slice"):
        read_dicom_series(CT_FILES[0])


def test_two_series_are_refused_naming_both(tmp_path: Path) -> None:
    folder = copy_series(tmp_path / "two")
    other_uid = generate_uid()
    for path in CT_FILES[:2]:
        copy = folder / f"other_{path.name}"
        shutil.copy(path, copy)
        rewrite(copy, SeriesInstanceUID=other_uid, SOPInstanceUID=generate_uid())
    with pytest.raises(InputError, match="2 series") as info:
        read_dicom_series(folder)
    message = str(info.value)
    assert other_uid in message and pydicom.dcmread(CT_FILES[0]).SeriesInstanceUID in message


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    folder = copy_series(tmp_path / "tilt")
    for path in folder.iterdir():  # 20 degrees: y shifts by tan(20°) per mm of z
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        rewrite(path, ImagePositionPatient=[x, y + np.tan(np.radians(20)) * (z + 126.69), z], GantryDetectorTilt=20)
    with pytest.raises(InputError, match="gantry tilt") as info:
        read_dicom_series(folder)
    assert "20.00 degrees" in str(info.value)


def test_uneven_spacing_is_refused(tmp_path: Path) -> None:
    folder = copy_series(tmp_path / "gap")
    ds = pydicom.dcmread(folder / "ct-3slice_01.dcm")  # z = -126.69; move it 2 mm further
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    rewrite(folder / "ct-3slice_01.dcm", ImagePositionPatient=[x, y, z + 2.0])
    with pytest.raises(InputError, match="inconsistent slice spacing"):
        read_dicom_series(folder)


def test_missing_pixel_data_is_refused(tmp_path: Path) -> None:
    folder = copy_series(tmp_path / "nopix")
    rewrite(folder / "ct-3slice_02.dcm", PixelData=None)
    with pytest.raises(InputError, match="no pixel data") as info:
        read_dicom_series(folder)
    assert "ct-3slice_02.dcm" in str(info.value)


def test_non_orthogonal_orientation_is_refused(tmp_path: Path) -> None:
    folder = copy_series(tmp_path / "skew")
    for path in folder.iterdir():
        rewrite(path, ImageOrientationPatient=[1, 0, 0, 0.2, 0.98, 0])
    with pytest.raises(InputError, match="orthogonal"):
        read_dicom_series(folder)


def test_duplicate_positions_and_empty_folders_are_refused(tmp_path: Path) -> None:
    folder = copy_series(tmp_path / "dup")
    shutil.copy(CT_FILES[0], folder / "again.dcm")
    rewrite(folder / "again.dcm", SOPInstanceUID=generate_uid())
    with pytest.raises(InputError, match="same position"):
        read_dicom_series(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no DICOM image files"):
        read_dicom_series(empty)


def test_geometry_not_names_decides_the_order(tmp_path: Path) -> None:
    folder = tmp_path / "renamed"
    folder.mkdir()
    for path, name in zip(CT_FILES, ("c.dcm", "a.dcm", "b.dcm"), strict=True):
        shutil.copy(path, folder / name)
    renamed = read_dicom_series(folder)
    original = read_dicom_series(SERIES)
    np.testing.assert_array_equal(renamed.volume.data, original.volume.data)
    np.testing.assert_array_equal(renamed.volume.affine, original.volume.affine)


def test_header_inspection_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from model.io.dicom_io import inspect_dicom_series\n"
        f"info = inspect_dicom_series({str(SERIES)!r})\n"
        "print(info.shape, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(512, 512, 3) []"
