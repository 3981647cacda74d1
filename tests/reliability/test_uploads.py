"""Hostile uploads against a real `latentseg serve` (RQ mode, real Redis, real HTTP, no worker).

Small limits make the caps cheap to hit: 200 kB compressed, 2 MB decompressed, 300k voxels.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from rq import Queue

from service.uploads.nifti import UploadLimits
from service.uploads.upload_sandbox import SandboxLimits, UploadUnchecked, check_upload
from tests.conftest import Process, purge_namespace
from tests.reliability.conftest import post_liver as _post
from tests.reliability.conftest import rq_api_server, unaccepted_job_dirs
from tests.reliability.hostile import EXTENSION_TEXT, PRIVATE, gz, gzip_bomb, nifti_bytes, patch, read_field

MAX_UPLOAD = 200_000
MAX_DECOMPRESSED = 2_000_000
MAX_VOXELS = 300_000


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    queue = f"lsrel-{uuid.uuid4().hex[:10]}"
    process = rq_api_server(
        redis_url, tmp_path_factory.mktemp("uploads"), queue,
        LATENTSEG_MAX_UPLOAD_BYTES=str(MAX_UPLOAD), LATENTSEG_MAX_DECOMPRESSED_BYTES=str(MAX_DECOMPRESSED),
        LATENTSEG_MAX_VOXELS=str(MAX_VOXELS), LATENTSEG_MAX_ACTIVE_JOBS_PER_KEY="1000",
    )
    yield process
    process.stop()
    purge_namespace(redis_url, queue)


@pytest.fixture
def http(server: Process) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _leftovers(server: Process) -> list[str]:
    return unaccepted_job_dirs(Path(server.extra["storage"]))


# ---------------------------------------------------------------- size caps


def test_compressed_cap_with_and_without_content_length_and_multipart(http: httpx.Client, server: Process) -> None:
    big = bytes(MAX_UPLOAD + 1)
    declared = _post(http, big)
    assert declared.status_code == 413 and str(MAX_UPLOAD) in declared.json()["detail"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
        for _ in range(100):
            yield bytes(50_000)

    streamed = http.post("/segment", params={"targets": "liver"}, content=chunked())
    assert streamed.status_code == 413
    multipart = http.post("/segment", params={"targets": "liver"}, files={"file": ("x.nii", big)})
    assert multipart.status_code == 413
    assert _leftovers(server) == []


def test_too_many_voxels_and_too_many_decompressed_bytes_are_413_from_the_header(http: httpx.Client) -> None:
    raw = nifti_bytes()
    voxels = _post(http, gz(patch(raw, "dim", 3, 1000, 1000, 1000, 1, 1, 1, 1)))
    assert voxels.status_code == 413 and "voxels" in voxels.json()["detail"]
    # Under the voxel cap, over the decompressed cap: float64 doubles the bytes.
    wide = patch(patch(raw, "dim", 3, 100, 100, 25, 1, 1, 1, 1), "datatype", 64)
    wide = patch(wide, "bitpix", 64)
    decompressed = _post(http, gz(wide))
    assert decompressed.status_code == 413 and "uncompressed" in decompressed.json()["detail"]


def test_gzip_bomb_is_cut_off_at_the_cap(http: httpx.Client, server: Process) -> None:
    # A header promising a 200 kB volume, then 1 GB of zeros: 1 MB on the wire.
    header = patch(nifti_bytes(), "dim", 3, 100, 100, 10, 1, 1, 1, 1)[:352]
    bomb = gzip_bomb(header, 1_000_000_000)
    assert len(bomb) < MAX_UPLOAD * 10
    started = time.monotonic()
    response = http.post("/segment", params={"targets": "liver"}, content=bomb[:MAX_UPLOAD])
    # Cut to the compressed cap it still inflates far beyond the volume: accepted, canonical copy exact.
    assert response.status_code == 202, response.text
    assert time.monotonic() - started < 20
    stored = Path(server.extra["storage"]) / "jobs" / response.json()["job_id"] / "input.nii"
    assert stored.stat().st_size == 352 + 100 * 100 * 10 * 2
    # A header claiming more than the decompressed cap is refused before inflating anything.
    huge = patch(nifti_bytes(), "dim", 3, 500, 500, 1, 1, 1, 1, 1)
    huge = patch(patch(huge, "datatype", 64), "bitpix", 64)
    assert _post(http, gzip_bomb(huge[:352], 10_000_000)).status_code == 413


def test_trailing_data_after_the_voxels_and_after_the_gzip_stream_is_dropped(http: httpx.Client, server: Process) -> None:
    raw = nifti_bytes(np.arange(8 * 8 * 4, dtype=np.int16).reshape(8, 8, 4))
    for body in (gz(raw + b"TRAILING" * 1000), gz(raw) + b"NOT GZIP AT ALL" * 100):
        response = _post(http, body, seed=len(body))
        assert response.status_code == 202, response.text
        stored = Path(server.extra["storage"]) / "jobs" / response.json()["job_id"] / "input.nii"
        assert stored.read_bytes()[352:] == raw[352:]


# ---------------------------------------------------------------- not NIfTI / malformed


@pytest.mark.parametrize(
    "body",
    [b"", b"hello\n" * 100, b"\x89PNG\r\n\x1a\n" + bytes(600), bytes(128) + b"DICM" + bytes(600), gz(b"text" * 200),
     b"\x1f\x8b" + bytes(600)],
    ids=["empty", "text", "png", "dicom", "gzipped-text", "broken-gzip"],
)
def test_not_a_nifti_is_415(http: httpx.Client, body: bytes) -> None:
    response = _post(http, body)
    assert response.status_code == 415, response.text
    assert "NIfTI" in response.json()["detail"]


def _malformed_cases() -> list[tuple[str, bytes, str]]:
    raw = nifti_bytes()
    noisy = gz(nifti_bytes(np.random.default_rng(0).integers(-1000, 1000, (16, 16, 16)).astype(np.int16)))
    singular = patch(patch(raw, "sform_code", 1), "srow_x", 0.0, 0.0, 0.0, 0.0)
    singular = patch(singular, "qform_code", 0)
    return [
        ("5-D", patch(raw, "dim", 5, 8, 8, 4, 1, 2, 1, 1), "3-D"),
        ("4-D x 3", patch(raw, "dim", 4, 8, 8, 4, 3, 1, 1, 1), "3-D"),
        ("zero dim", patch(raw, "dim", 3, 8, 0, 4, 1, 1, 1, 1), "at least 1"),
        ("dim0 9", patch(raw, "dim", 9, 8, 8, 4, 1, 1, 1, 1), "dim[0]"),
        ("complex", patch(patch(raw, "datatype", 32), "bitpix", 64), "not supported"),
        ("rgb", patch(patch(raw, "datatype", 128), "bitpix", 24), "not supported"),
        ("bool", patch(patch(raw, "datatype", 1), "bitpix", 1), "datatype"),
        ("unknown code", patch(raw, "datatype", 12345), "datatype"),
        ("zero pixdim", patch(raw, "pixdim", 1, 1.5, 0.0, 3, 1, 1, 1, 1), "spacing"),
        ("negative pixdim", patch(raw, "pixdim", 1, -1.5, 1.5, 3, 1, 1, 1, 1), "spacing"),
        ("nan pixdim", patch(raw, "pixdim", 1, math.nan, 1.5, 3, 1, 1, 1, 1), "spacing"),
        ("inf pixdim", patch(raw, "pixdim", 1, math.inf, 1.5, 3, 1, 1, 1, 1), "spacing"),
        ("singular affine", singular, "singular"),
        ("vox_offset in header", patch(raw, "vox_offset", 100.0), "vox_offset"),
        ("fractional vox_offset", patch(raw, "vox_offset", 352.5), "vox_offset"),
        ("infinite slope", patch(raw, "scl_slope", math.inf), "scaling"),
        ("hdr/img pair", patch(raw, "magic", b"ni1\x00"), ".hdr/.img"),
        ("extension read as voxels", patch(nifti_bytes(private=True), "vox_offset", 352.0), "extension"),
        ("truncated", raw[:400], "truncated"),
        ("truncated gz", noisy[: len(noisy) // 2], "truncated"),
    ]


@pytest.mark.parametrize(("name", "body", "says"), _malformed_cases(), ids=[c[0] for c in _malformed_cases()])
def test_malformed_nifti_is_422_saying_what_is_wrong(http: httpx.Client, server: Process, name: str, body: bytes, says: str) -> None:
    response = _post(http, body)
    assert response.status_code == 422, (name, response.text)
    assert says in response.json()["detail"], response.json()
    assert _leftovers(server) == []


def test_bad_sizeof_hdr_is_not_nifti(http: httpx.Client) -> None:
    assert _post(http, patch(nifti_bytes(), "sizeof_hdr", 349)).status_code == 415


# ---------------------------------------------------------------- NaN/Inf and privacy


def test_nonfinite_voxels_are_accepted_and_counted(http: httpx.Client) -> None:
    data = np.zeros((8, 8, 4), np.float32)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.inf, -np.inf
    response = _post(http, gz(nifti_bytes(data)))
    assert response.status_code == 202, response.text
    status = http.get(response.json()["status_url"]).json()
    assert status["nonfinite_voxels"] == 3


def test_nonfinite_policy_reject_refuses_with_422(tmp_path: Path) -> None:
    data = np.zeros((8, 8, 4), np.float64)
    data[3, 3, 3] = np.nan
    src = tmp_path / "nan.nii"
    src.write_bytes(nifti_bytes(data))
    limits = UploadLimits(MAX_VOXELS, MAX_DECOMPRESSED, reject_nonfinite=True)
    with pytest.raises(Exception, match="1 NaN/Inf voxels") as info:
        asyncio.run(check_upload(src, tmp_path / "out.nii", limits, SandboxLimits(60, 1 << 30, 60)))
    assert getattr(info.value, "status", None) == 422
    assert not (tmp_path / "out.nii").exists()


def test_header_text_extensions_and_filename_never_reach_storage_or_logs(http: httpx.Client, server: Process) -> None:
    raw = nifti_bytes(private=True)
    assert PRIVATE["descrip"] in raw and EXTENSION_TEXT in raw
    response = http.post(
        "/segment", params={"targets": "liver"}, files={"file": ("Roe_Jane_0042.nii.gz", gz(raw), "application/gzip")}
    )
    assert response.status_code == 202, response.text
    job_dir = Path(server.extra["storage"]) / "jobs" / response.json()["job_id"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["input.nii", "job.json"]
    stored = b"".join(p.read_bytes() for p in job_dir.iterdir())
    log = server.log_path.read_bytes()
    for secret in (*PRIVATE.values(), EXTENSION_TEXT, b"Roe_Jane", b"Jane"):
        assert secret not in stored, secret
        assert secret not in log, secret
    assert read_field((job_dir / "input.nii").read_bytes(), "vox_offset") == (352.0,)
    assert response.json()["job_id"].encode() in log  # logs carry job ids


# ---------------------------------------------------------------- isolation


def test_a_crashing_validator_is_a_422_and_the_api_lives_on(tmp_path: Path, http: httpx.Client) -> None:
    src = tmp_path / "x.nii"
    src.write_bytes(nifti_bytes())
    limits = UploadLimits(MAX_VOXELS, MAX_DECOMPRESSED)
    sandbox = SandboxLimits(timeout_s=30, memory_bytes=1 << 30, cpu_s=30)
    # A validator that segfaults (as a native bug in decompression or parsing would).
    with pytest.raises(UploadUnchecked, match="SIGSEGV"):
        asyncio.run(check_upload(src, tmp_path / "o.nii", limits, sandbox, module="tests.reliability.segfault"))
    # One that hangs is killed at the wall-clock limit.
    started = time.monotonic()
    with pytest.raises(UploadUnchecked, match="within"):
        asyncio.run(check_upload(src, tmp_path / "o.nii", limits, SandboxLimits(1.0, 1 << 30, 30), module="tests.reliability.hang"))
    assert time.monotonic() - started < 10
    # One starved of memory dies (MemoryError/ImportError inside the limits): refused, not a 500.
    with pytest.raises(UploadUnchecked, match="failed"):
        asyncio.run(check_upload(src, tmp_path / "o.nii", limits, SandboxLimits(30, 16 << 20, 30)))
    assert http.get("/healthz").status_code == 200


def test_no_upload_leaves_a_stray_job_in_the_queue(server: Process, redis_url: str, http: httpx.Client) -> None:
    queue = Queue(server.extra["queue"], connection=redis.Redis.from_url(redis_url))
    before = queue.count
    _post(http, b"junk")
    _post(http, patch(nifti_bytes(), "dim", 5, 8, 8, 4, 1, 2, 1, 1))
    assert queue.count == before
    assert json.loads(http.get("/openapi.json").text)["paths"]["/segment"]["post"]["responses"]["413"]
