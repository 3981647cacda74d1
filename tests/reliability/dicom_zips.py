"""Builders for DICOM series uploads, good and hostile, from the shared real 3-slice CT series.

The series lives beside the repo (``../shared/data/dicom-ct3slice``); tests that need it skip
with a reason when it is absent. Modified copies get fresh SOPInstanceUIDs where a real
scanner would write them.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import REPO_ROOT

SERIES = REPO_ROOT.parent / "shared" / "data" / "dicom-ct3slice"
CT_FILES = sorted(SERIES.glob("ct-3slice_*.dcm"))
needs_series = pytest.mark.skipif(
    len(CT_FILES) != 3, reason=f"real data not available: {SERIES} is absent (shared data lives beside the repo)"
)
# Written into the headers (and a member name) of the "private" upload: none of it may reach a log.
PATIENT_NAME = "Roe^Jane"
PATIENT_ID = "MRN-0042-ROE"
PRIVATE_MEMBER = "Roe_Jane_MRN-0042-ROE_slice.dcm"

Edit = Callable[[int, Dataset], None]


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def slices(edit: Edit | None = None) -> list[bytes]:
    """The three real slices as bytes, each optionally edited (``edit(index, dataset)``)."""
    out: list[bytes] = []
    for index, path in enumerate(CT_FILES):
        if edit is None:
            out.append(path.read_bytes())
            continue
        ds = pydicom.dcmread(path)
        edit(index, ds)
        out.append(_encoded(ds))
    return out


def zip_bytes(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members:  # a fixed timestamp: the same members give the same bytes
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = compression
            archive.writestr(info, data)
    return buffer.getvalue()


def series_zip(path: Path | None = None, *, with_clutter: bool = True) -> bytes:
    """The real series in nested folders, plus what travels with real exports: a SEG and text files."""
    members = [(f"study/series/{p.name}", p.read_bytes()) for p in CT_FILES]
    if with_clutter:
        members += [("study/liver.dcm", (SERIES / "liver.dcm").read_bytes()), ("README.txt", b"exported by PACS\n")]
    data = zip_bytes(members)
    if path is not None:
        path.write_bytes(data)
    return data


def private_series_zip() -> bytes:
    def edit(index: int, ds: Dataset) -> None:
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    data = slices(edit)
    return zip_bytes([(PRIVATE_MEMBER if i == 0 else f"s{i}.dcm", d) for i, d in enumerate(data)])


def one_slice_zip() -> bytes:
    return zip_bytes([("only.dcm", CT_FILES[0].read_bytes())])


def two_series_zip() -> bytes:
    def other(index: int, ds: Dataset) -> None:
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    copies = slices(other)
    return zip_bytes([(p.name, p.read_bytes()) for p in CT_FILES] + [(f"copy_{i}.dcm", d) for i, d in enumerate(copies)])


def tilted_zip() -> bytes:
    """Each slice shifted 5 mm along y per slice (about 79 degrees off the normal): a gantry tilt."""

    def tilt(index: int, ds: Dataset) -> None:
        position = [float(v) for v in ds.ImagePositionPatient]
        distance = position[2]
        position[1] += 5.0 * distance  # grows with the slice's place along z
        ds.ImagePositionPatient = position
        ds.GantryDetectorTilt = 12.0

    return zip_bytes([(f"t{i}.dcm", d) for i, d in enumerate(slices(tilt))])


def zip_slip() -> bytes:
    """Members named to escape the extraction folder; their content is not DICOM."""
    return zip_bytes([("../../../../tmp/latentseg-zip-slip.txt", b"owned\n"), ("/etc/latentseg-zip-slip", b"owned\n")])


def zip_slip_series() -> bytes:
    """The real slices under escaping names: accepted, and nothing lands outside."""
    return zip_bytes([(f"../../../../tmp/latentseg-slip-{i}.dcm", p.read_bytes()) for i, p in enumerate(CT_FILES)])


def zip_bomb(inflated_bytes: int) -> bytes:
    """One member of ``inflated_bytes`` zeros (about 1000:1), built without holding it in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("bomb.dcm", "w") as member:
            block = bytes(1 << 20)
            remaining = inflated_bytes
            while remaining > 0:
                member.write(block[: min(remaining, len(block))])
                remaining -= len(block)
    return buffer.getvalue()


def many_members(count: int) -> bytes:
    return zip_bytes([(f"f{i}.txt", b"x") for i in range(count)])


def modality_zip(modality: str) -> bytes:
    """The real slices relabelled as another modality (an MR series must not be segmented as CT)."""

    def relabel(index: int, ds: Dataset) -> None:
        ds.Modality = modality

    return zip_bytes([(f"m{i}.dcm", d) for i, d in enumerate(slices(relabel))])


def damaged_slice_zip(how: str) -> bytes:
    """The real series with its first file (an end of the stack) damaged: ``header`` cuts it inside
    the header, ``pixels`` inside the pixel data, ``garbage`` keeps only the preamble."""
    data = [p.read_bytes() for p in CT_FILES]
    first = data[0]
    data[0] = {"header": first[:600], "pixels": first[: len(first) // 2],
               "garbage": first[:132] + bytes(range(256)) * 8}[how]
    return zip_bytes([(f"slice{i}.dcm", d) for i, d in enumerate(data)])
