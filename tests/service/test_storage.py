"""Uploads are streamed under server-generated names with a byte cap; results are served by listing only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.storage import Storage, UploadTooLarge
from worker.contracts import new_job_id


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_gzip_upload_is_stored_as_input_nii_gz(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    job_id = new_job_id()
    path = asyncio.run(storage.save_upload(job_id, _chunks(b"\x1f", b"\x8b rest"), max_bytes=100))
    assert path == tmp_path / "jobs" / job_id / "input.nii.gz"
    assert path.read_bytes() == b"\x1f\x8b rest"
    assert storage.input_path(job_id) == path


def test_plain_upload_is_stored_as_input_nii(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    job_id = new_job_id()
    path = asyncio.run(storage.save_upload(job_id, _chunks(b"abc", b"def"), max_bytes=6))
    assert path.name == "input.nii" and path.read_bytes() == b"abcdef"


def test_upload_over_the_cap_is_cut_off_and_leaves_nothing(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    job_id = new_job_id()
    with pytest.raises(UploadTooLarge):
        asyncio.run(storage.save_upload(job_id, _chunks(b"x" * 60, b"y" * 60), max_bytes=100))
    assert not storage.job_dir(job_id).exists()


def test_job_dirs_refuse_anything_but_job_ids(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    for bad in ("../etc", "a/b", "", "ABC", "0" * 31):
        with pytest.raises(ValueError):
            storage.job_dir(bad)


def test_only_listed_result_files_are_served(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    job_id = new_job_id()
    results = storage.job_dir(job_id) / "results"
    results.mkdir(parents=True)
    (results / "liver_mean.nii.gz").write_bytes(b"1234")
    (storage.job_dir(job_id) / "input.nii.gz").write_bytes(b"secret")
    assert [(f.name, f.size) for f in storage.results(job_id)] == [("liver_mean.nii.gz", 4)]
    assert storage.result(job_id, "liver_mean.nii.gz") is not None
    for name in ("../input.nii.gz", "..", "", "results/liver_mean.nii.gz"):
        assert storage.result(job_id, name) is None


def test_no_results_until_the_directory_exists(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    job_id = new_job_id()
    (storage.job_dir(job_id) / ".results-abcd").mkdir(parents=True)
    (storage.job_dir(job_id) / ".results-abcd" / "liver_mean.nii.gz").write_bytes(b"half")
    assert storage.results(job_id) == []
