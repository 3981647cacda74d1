"""Uploads are streamed under server-generated names with a byte cap; results are served by listing only."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.queueing.storage import Storage, UploadTooLarge
from worker.contracts import new_job_id


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_upload_is_streamed_under_a_server_name_counted_and_hashed(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    job_id = new_job_id()
    raw = asyncio.run(storage.save_upload(job_id, _chunks(b"\x1f", b"\x8b rest"), max_bytes=100))
    assert raw.path == tmp_path / "jobs" / job_id / ".upload.raw"
    assert raw.path.read_bytes() == b"\x1f\x8b rest" and raw.size == 7
    assert raw.sha256 == hashlib.sha256(b"\x1f\x8b rest").hexdigest()
    assert storage.input_path(job_id) is None  # only the validator's canonical copy is an input


def test_manifest_round_trip_and_temp_result_cleanup(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    job_id = new_job_id()
    assert storage.read_manifest(job_id) is None
    storage.job_dir(job_id).mkdir(parents=True)
    storage.write_manifest(job_id, {"payload": {"job_id": job_id}})
    assert storage.read_manifest(job_id) == {"payload": {"job_id": job_id}}
    assert storage.job_ids() == [job_id]
    (storage.job_dir(job_id) / ".results-dead").mkdir()
    (storage.job_dir(job_id) / "results").mkdir()
    storage.remove_temp_results(job_id)
    assert sorted(p.name for p in storage.job_dir(job_id).iterdir()) == ["job.json", "results"]


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
