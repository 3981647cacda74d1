"""A full storage volume against a real `latentseg serve` (RQ mode, real Redis, real HTTP, no worker)
whose storage directory is a 2 MB tmpfs: 507 with the JSON error body and Retry-After, nothing
half-written left behind, and the service takes the next upload that fits.

Mounting needs root (CI and the development machine run as root); elsewhere the test skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Process, clean_env, launch_server, purge_namespace
from tests.reliability.conftest import post_liver
from tests.reliability.dicom_zips import needs_series, series_zip
from tests.reliability.hostile import gz, nifti_bytes

FS_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def small_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mount = shutil.which("mount")
    point = tmp_path_factory.mktemp("small-fs")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root and mount(8)")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture(scope="module")
def server(redis_url: str, small_fs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    queue = f"lsfull-{uuid.uuid4().hex[:10]}"
    root = tmp_path_factory.mktemp("storage-full")
    env = clean_env(REDIS_URL=redis_url, LATENTSEG_QUEUE=queue, LATENTSEG_STORAGE_DIR=str(small_fs / "storage"),
                    LATENTSEG_MAX_ACTIVE_JOBS_PER_KEY="1000")
    process = launch_server(env, root / "serve.log")  # the log stays off the small volume
    yield process
    process.stop()
    purge_namespace(redis_url, queue)


@pytest.fixture
def http(server: Process) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _used(point: Path) -> int:
    stats = os.statvfs(point)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def _job_dirs(point: Path) -> list[str]:
    jobs = point / "storage" / "jobs"
    return sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []


def _assert_storage_full(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["status"] == 507 and body["detail"].startswith("storage full"), body


def _ct(shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 1000, size=shape, dtype=np.int16)


def test_a_raw_upload_larger_than_the_free_space_is_507_and_leaves_nothing(
    http: httpx.Client, small_fs: Path
) -> None:
    before = _used(small_fs)
    big = nifti_bytes(_ct((128, 128, 96)))  # 3.1 MB, uncompressed: the raw upload itself does not fit
    assert len(big) > FS_BYTES
    _assert_storage_full(post_liver(http, big))
    assert _job_dirs(small_fs) == [] and _used(small_fs) <= before


def test_an_upload_whose_checked_copy_does_not_fit_is_507_and_leaves_nothing(
    http: httpx.Client, small_fs: Path
) -> None:
    before = _used(small_fs)
    volume = np.zeros((128, 128, 96), np.int16)
    volume[::7] = 40
    small = gz(nifti_bytes(volume))  # about 30 kB; its canonical input.nii is 3.1 MB
    assert len(small) < 100_000
    _assert_storage_full(post_liver(http, small))
    assert _job_dirs(small_fs) == [] and _used(small_fs) <= before


@needs_series
def test_a_dicom_zip_that_cannot_be_unpacked_for_lack_of_space_is_507_not_422(
    http: httpx.Client, small_fs: Path
) -> None:
    before = _used(small_fs)
    archive = series_zip(with_clutter=False)  # about 1 MB; its slices inflate to 1.6 MB, then the canonical copy
    _assert_storage_full(post_liver(http, archive))
    assert _job_dirs(small_fs) == [] and _used(small_fs) <= before


def test_after_a_full_disk_the_next_upload_that_fits_is_accepted(http: httpx.Client, small_fs: Path) -> None:
    _assert_storage_full(post_liver(http, nifti_bytes(_ct((128, 128, 96)))))
    accepted = post_liver(http, gz(nifti_bytes(_ct((32, 32, 8)))))
    assert accepted.status_code == 202, accepted.text
    assert _job_dirs(small_fs) == [accepted.json()["job_id"]]
