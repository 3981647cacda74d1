"""The upload validator (in-process): header checks and the canonical copy. Hostile inputs,
privacy and the sandbox subprocess are in tests/reliability."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from service.uploads.nifti import MalformedNifti, NotNifti, UploadLimits, UploadTooBig, VolumeInfo, normalize_upload
from tests.conftest import Volume, write_nifti

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def check_nifti_header(path: Path, *, max_voxels: int) -> VolumeInfo:
    return normalize_upload(path, path.with_name("canonical.nii"), UploadLimits(max_voxels, 10**9))


def test_valid_gzip_and_plain_volumes_report_shape_and_spacing(tmp_path: Path, small_nifti: Volume) -> None:
    info = check_nifti_header(small_nifti.path, max_voxels=10**7)
    assert info.shape == small_nifti.image.shape
    assert info.spacing == (1.5, 1.5, 3.0)
    assert info.dtype == "int16"
    plain = write_nifti(tmp_path / "v.nii", np.zeros((5, 6, 7), np.float32), AFFINE)
    assert check_nifti_header(plain, max_voxels=10**7).shape == (5, 6, 7)


def test_single_volume_4d_is_accepted(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", np.zeros((4, 5, 6, 1), np.int16), AFFINE)
    assert check_nifti_header(path, max_voxels=10**7).shape == (4, 5, 6)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world\n" * 100, b"\x89PNG\r\n\x1a\n" + bytes(600), gzip.compress(b"not a nifti" * 100)],
    ids=["empty", "text", "png", "gzipped-text"],
)
def test_non_nifti_bytes_are_not_nifti(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "upload"
    path.write_bytes(content)
    with pytest.raises(NotNifti):
        check_nifti_header(path, max_voxels=10**7)


def test_damaged_gzip_stream_is_not_nifti(tmp_path: Path, small_nifti: Volume) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(small_nifti.path.read_bytes()[:20])
    with pytest.raises(NotNifti):
        check_nifti_header(path, max_voxels=10**7)


def test_multi_volume_4d_is_malformed(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", np.zeros((4, 5, 6, 3), np.int16), AFFINE)
    with pytest.raises(MalformedNifti, match="3-D"):
        check_nifti_header(path, max_voxels=10**7)


def test_too_many_voxels_is_refused_from_the_header(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", np.zeros((10, 10, 10), np.int16), AFFINE)
    with pytest.raises(UploadTooBig, match="999"):
        check_nifti_header(path, max_voxels=999)
    assert check_nifti_header(path, max_voxels=1000).shape == (10, 10, 10)


def test_complex_voxels_are_malformed(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", np.zeros((4, 4, 4), np.complex64), AFFINE)
    with pytest.raises(MalformedNifti, match="datatype"):
        check_nifti_header(path, max_voxels=10**7)


def test_zero_spacing_is_malformed(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), AFFINE)
    image.header["pixdim"][1:4] = (1.0, 0.0, 1.0)
    path = tmp_path / "v.nii"
    nib.save(image, str(path))
    with pytest.raises(MalformedNifti, match="spacing"):
        check_nifti_header(path, max_voxels=10**7)


def test_truncated_uncompressed_file_is_malformed(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii", np.zeros((20, 20, 20), np.int16), AFFINE)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(MalformedNifti, match="truncated"):
        check_nifti_header(path, max_voxels=10**7)
