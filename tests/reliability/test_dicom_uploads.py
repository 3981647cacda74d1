"""DICOM series zips, good and hostile, against a real `latentseg serve` (RQ mode, real Redis, real
HTTP, no worker): what is stored, what is refused with which answer, and what never reaches a log.

Limits are small so the caps are cheap to hit: 3 MB compressed, 4 MB inflated, 1M voxels, 20 zip
members. The real 3-slice series (512x512x3, 1.6 MB inflated) fits under all of them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from service.uploads.nifti import UploadLimits, UploadTooBig
from service.uploads.upload_sandbox import SandboxLimits, check_upload
from tests.conftest import Process, purge_namespace
from tests.reliability.conftest import post_liver as _post
from tests.reliability.conftest import rq_api_server, unaccepted_job_dirs
from tests.reliability.dicom_zips import SERIES as SERIES_DIR
from tests.reliability.dicom_zips import (
    CT_FILES,
    PATIENT_ID,
    PATIENT_NAME,
    PRIVATE_MEMBER,
    damaged_slice_zip,
    many_members,
    modality_zip,
    needs_series,
    one_slice_zip,
    private_series_zip,
    series_zip,
    tilted_zip,
    two_series_zip,
    zip_bomb,
    zip_bytes,
    zip_slip,
    zip_slip_series,
)

MAX_UPLOAD = 3_000_000
MAX_DECOMPRESSED = 4_000_000
MAX_VOXELS = 1_000_000
MAX_FILES = 20


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    queue = f"lsdcm-{uuid.uuid4().hex[:10]}"
    process = rq_api_server(
        redis_url, tmp_path_factory.mktemp("dicom-uploads"), queue,
        LATENTSEG_MAX_UPLOAD_BYTES=str(MAX_UPLOAD), LATENTSEG_MAX_DECOMPRESSED_BYTES=str(MAX_DECOMPRESSED),
        LATENTSEG_MAX_VOXELS=str(MAX_VOXELS), LATENTSEG_MAX_DICOM_FILES=str(MAX_FILES),
        LATENTSEG_MAX_ACTIVE_JOBS_PER_KEY="1000",
    )
    yield process
    process.stop()
    purge_namespace(redis_url, queue)


@pytest.fixture
def http(server: Process) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _job_dir(server: Process, job_id: str) -> Path:
    return Path(server.extra["storage"]) / "jobs" / job_id


def _leftovers(server: Process) -> list[str]:
    return unaccepted_job_dirs(Path(server.extra["storage"]))


# ---------------------------------------------------------------- accepted


@needs_series
def test_a_series_zip_is_stored_as_its_slices_in_geometric_order(http: httpx.Client, server: Process) -> None:
    response = http.post("/segment", params={"targets": "liver, left kidney"},
                         files={"file": ("export.zip", series_zip(), "application/zip")})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    status = http.get(response.json()["status_url"]).json()
    assert status["input_shape"] == [512, 512, 3]
    assert status["input_spacing"] == pytest.approx([0.810547, 0.810547, 1.0], abs=1e-4)
    assert status["input_format"] == "dicom" and status["dicom_seg"] is True and status["fractional"] is False

    directory = _job_dir(server, job_id)
    assert sorted(p.name for p in directory.iterdir()) == ["input.zip", "job.json"]
    with zipfile.ZipFile(directory / "input.zip") as archive:
        # The SEG and README that came along are gone; names are generated, in order along the normal.
        assert archive.namelist() == ["slice_00000.dcm", "slice_00001.dcm", "slice_00002.dcm"]
        z = [float(pydicom.dcmread(archive.open(n), stop_before_pixels=True).ImagePositionPatient[2])
             for n in archive.namelist()]
        assert z == sorted(z)
        originals = {p.read_bytes() for p in CT_FILES}
        assert {archive.read(n) for n in archive.namelist()} == originals  # byte for byte

    # The raw body works too; the output flags are part of what makes a duplicate.
    raw = _post(http, series_zip(with_clutter=False), dicom="false")
    assert raw.status_code == 202, raw.text
    assert http.get(raw.json()["status_url"]).json()["dicom_seg"] is False
    again = _post(http, series_zip(with_clutter=False), dicom="false")
    assert again.status_code == 200 and again.json()["duplicate"] and again.json()["job_id"] == raw.json()["job_id"]
    fractional = _post(http, series_zip(with_clutter=False), fractional="true")
    assert fractional.status_code == 202 and fractional.json()["job_id"] != raw.json()["job_id"]
    assert http.get(fractional.json()["status_url"]).json()["fractional"] is True


@needs_series
def test_zip_slip_names_cannot_escape(http: httpx.Client, server: Process) -> None:
    storage = Path(server.extra["storage"])

    def escaped() -> list[Path]:
        return sorted(
            hit for folder in (storage.parent, Path("/tmp"), Path("/etc"))
            for hit in (folder.rglob if folder == storage.parent else folder.glob)("latentseg-*slip*")
        )

    before = escaped()
    refused = _post(http, zip_slip())
    assert refused.status_code == 415 and "no DICOM image files" in refused.json()["detail"]
    accepted = _post(http, zip_slip_series())  # real slices under escaping names: read under generated names
    assert accepted.status_code == 202, accepted.text
    assert escaped() == before
    assert _leftovers(server) == []


# ---------------------------------------------------------------- refused


@needs_series
@pytest.mark.parametrize(
    ("build", "status", "says"),
    [
        (one_slice_zip, 422, "single slice"),
        (two_series_zip, 422, "2 series"),
        (tilted_zip, 422, "gantry tilt"),
        (lambda: modality_zip("MR"), 422, "Modality is 'MR', not CT"),
        (lambda: modality_zip("PT"), 422, "Modality is 'PT', not CT"),
        # A damaged end slice used to be skipped silently (the rest is still evenly spaced): now named.
        (lambda: damaged_slice_zip("header"), 422, "damaged DICOM file(s) (000000_slice0.dcm: image header"),
        (lambda: damaged_slice_zip("pixels"), 422, "000000_slice0.dcm: pixel data truncated"),
        (lambda: damaged_slice_zip("garbage"), 422, "000000_slice0.dcm: DICOM preamble but no readable header"),
    ],
    ids=["one-slice", "two-series", "tilt", "mr", "pet", "damaged-header", "damaged-pixels", "damaged-garbage"],
)
def test_a_zip_that_is_not_one_usable_series_is_refused_saying_why(
    http: httpx.Client, server: Process, build, status: int, says: str  # type: ignore[no-untyped-def]
) -> None:
    response = _post(http, build())
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert _leftovers(server) == []


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (zip_bytes([("notes.txt", b"hello" * 100), ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(200))]), 415, "no DICOM"),
        (zip_bytes([]), 415, "no DICOM"),
        (b"PK\x03\x04" + bytes(600), 415, "zip"),
        (many_members(MAX_FILES + 1), 413, f"at most {MAX_FILES}"),
        (zip_bomb(50_000_000), 413, str(MAX_DECOMPRESSED)),
    ],
    ids=["text-and-png", "empty-zip", "broken-zip", "too-many-members", "zip-bomb"],
)
def test_hostile_or_wrong_zips_get_4xx_with_a_message(
    http: httpx.Client, server: Process, body: bytes, status: int, says: str
) -> None:
    assert len(body) < MAX_UPLOAD
    response = _post(http, body)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"], response.json()
    assert _leftovers(server) == []
    assert http.get("/healthz").status_code == 200


def test_a_zip_bomb_with_a_lying_size_is_refused_too(http: httpx.Client, server: Process) -> None:
    bomb = bytearray(zip_bomb(20_000_000))
    # Claim 1000 bytes in the central directory: reading stops at the claim and the CRC fails.
    offset = bomb.rfind(b"PK\x01\x02")
    bomb[offset + 24 : offset + 28] = (1000).to_bytes(4, "little")
    response = _post(http, bytes(bomb))
    assert 400 <= response.status_code < 500, response.text
    assert _leftovers(server) == []


@needs_series
def test_the_voxel_cap_applies_to_series(tmp_path: Path) -> None:
    src = tmp_path / "series.zip"
    series_zip(src)
    limits = UploadLimits(max_voxels=512 * 512 * 2, max_decompressed_bytes=MAX_DECOMPRESSED)
    with pytest.raises(UploadTooBig, match="786432 voxels"):
        asyncio.run(check_upload(src, tmp_path / "input.zip", limits, SandboxLimits(60, 1 << 30, 60), kind="dicom_zip"))
    assert not (tmp_path / "input.zip").exists()


# ---------------------------------------------------------------- privacy


@needs_series
def test_patient_fields_and_member_names_never_reach_the_log(http: httpx.Client, server: Process) -> None:
    accepted = http.post("/segment", params={"targets": "liver"},
                         files={"file": ("Roe_Jane_CT.zip", private_series_zip(), "application/zip")})
    assert accepted.status_code == 202, accepted.text
    # A refusal quotes the client's member names to the client, never to the log.
    refused = _post(http, zip_bytes([(PRIVATE_MEMBER, CT_FILES[0].read_bytes())]))
    assert refused.status_code == 422 and "single slice" in refused.json()["detail"]
    log = server.log_path.read_bytes()
    for secret in (PATIENT_NAME, "Roe", PATIENT_ID, PRIVATE_MEMBER, "Jane"):
        assert secret.encode() not in log, secret
    assert accepted.json()["job_id"].encode() in log
    with zipfile.ZipFile(_job_dir(server, accepted.json()["job_id"]) / "input.zip") as archive:
        assert PRIVATE_MEMBER not in archive.namelist()


def test_fractional_cannot_go_with_dicom_false(http: httpx.Client) -> None:
    response = _post(http, zip_bytes([]), dicom="false", fractional="true")
    assert response.status_code == 422 and "fractional" in response.json()["detail"]


@needs_series
def test_reading_a_series_logs_counts_never_file_names_or_uids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What the worker and the CLI call: files named by their UIDs (as PACS exports do), a SEG and a
    README beside them, a symbolic link in a zip. INFO lines say how many were skipped, nothing more."""
    from model.io.dicom_io import read_dicom_series

    seg = SERIES_DIR / "liver.dcm"
    members = [(f"CT.{pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID}", p.read_bytes()) for p in CT_FILES]
    members += [(f"SEG.{pydicom.dcmread(seg, stop_before_pixels=True).SOPInstanceUID}", seg.read_bytes()),
                (f"{PATIENT_NAME}.txt", b"notes\n")]
    folder = tmp_path / "export"
    folder.mkdir()
    for name, data in members:
        (folder / name).write_bytes(data)
    archive = tmp_path / "export.zip"
    archive.write_bytes(zip_bytes(members))
    with caplog.at_level(logging.INFO):
        for source in (folder, archive):
            assert read_dicom_series(source).volume.shape == (512, 512, 3)
    text = caplog.text
    assert "1 SEG object(s) skipped" in text and "1 non-DICOM files skipped" in text
    for name, _ in members:
        assert name not in text and name.split(".", 1)[-1] not in text, name
