"""The shared folder walk behind DICOM folder reads (server) and folder uploads (client)."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from model.io.dicom_io import DicomLimits, find_dicom_files
from model.errors import InputError
from model.io.file_walk import regular_files
from service.client import zip_folder


def make_tree(root: Path) -> None:
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    for rel in ("z.dcm", "a/2.dcm", "a/1.dcm", "b/deep/x.dcm", "b/0.dcm"):
        (root / rel).write_bytes(rel.encode())
    (root / "link.dcm").symlink_to(root / "z.dcm")
    (root / "dirlink").symlink_to(root / "a", target_is_directory=True)


def test_regular_files_recurse_in_a_stable_order_and_skip_symlinks(tmp_path: Path) -> None:
    make_tree(tmp_path)
    got = [p.relative_to(tmp_path).as_posix() for p in regular_files(tmp_path)]
    assert got == ["z.dcm", "a/1.dcm", "a/2.dcm", "b/0.dcm", "b/deep/x.dcm"]


def test_server_reader_and_client_upload_see_the_same_files(tmp_path: Path) -> None:
    make_tree(tmp_path)
    server = [p.relative_to(tmp_path).as_posix() for p in find_dicom_files(tmp_path)]
    buffer = BytesIO()
    assert zip_folder(tmp_path, buffer) == len(server)
    with zipfile.ZipFile(buffer) as archive:
        assert archive.namelist() == server
        assert archive.read("a/1.dcm") == b"a/1.dcm"


def test_the_server_caps_the_file_count(tmp_path: Path) -> None:
    make_tree(tmp_path)
    with pytest.raises(InputError, match="more than 4 files"):
        find_dicom_files(tmp_path, DicomLimits(max_files=4))
