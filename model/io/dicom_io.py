"""Reading one DICOM CT series (a folder or a .zip) into a :class:`~model.inference.preprocessing.Volume`.

Geometry
    Slices are sorted by geometry, never by file name or InstanceNumber: each slice's
    ImagePositionPatient is projected on the slice normal ``n = row_cosines x column_cosines``
    and the series is ordered by that distance (ascending, so the third voxel axis points along
    ``n``). Voxel ``(i, j, k)`` is column ``i``, row ``j`` of the ``k``-th slice, and the
    affine maps it to RAS+ millimetres (nibabel's convention: +x is the patient's *right*...
    of the origin, i.e. x grows towards the patient's left in LPS and is negated here)::

        lps = P_0 + i * dc * X + j * dr * Y + k * (P_last - P_0) / (K - 1)
        ras = diag(-1, -1, 1) @ lps

    with ``X``/``Y`` the row/column direction cosines (ImageOrientationPatient), ``dc``/``dr``
    the column/row spacing (PixelSpacing is ``[row spacing, column spacing]``). This matches
    what dcm2niix and SimpleITK produce.

Intensities
    Stored values times RescaleSlope plus RescaleIntercept (per slice) give HU as float32;
    non-finite values follow :func:`model.inference.preprocessing.sanitize_hu`.

What is refused (:class:`~model.errors.InputError`, one clear sentence each)
    no DICOM file; a single slice; several series (their SeriesInstanceUIDs are named);
    images without pixel data; multi-frame (enhanced) objects; slices of different size,
    pixel spacing or orientation; non-orthogonal direction cosines; gantry tilt (slice
    positions not stacked along the slice normal); two slices at one position; uneven slice
    spacing (missing slices); compressed pixel data this install cannot decode; a series whose
    Modality is not CT (an MR series would be segmented as if it were CT); a damaged file that
    was meant to be a slice (a DICOM file that cannot be parsed, an image whose header stops
    short, or uncompressed pixel data shorter than Rows x Columns says), named, never skipped.
    Non-image objects that often travel with a series (SEG, RTSTRUCT, SR, presentation states,
    DICOMDIR) and non-DICOM files (README, .DS_Store) are skipped with a log line that counts
    them: log lines never carry file names, UIDs or patient attributes (a file name often is a
    UID, or a patient's name).

Zip uploads
    :func:`extract_zip` never uses a member's path: members are written as
    ``000000_<base name>`` under the destination, the base name reduced to ``[A-Za-z0-9._-]``
    (it only makes error messages readable), so "zip slip" (``../``, absolute paths) cannot
    escape it; symbolic-link members are skipped. Member count and uncompressed bytes are capped by counting the
    bytes actually inflated (not the sizes the archive declares), which defeats zip bombs.

Only pydicom and numpy are imported at module level (no torch): :func:`inspect_dicom_series`
can run in the API process. :func:`read_dicom_series` imports ``model.inference.preprocessing``.
"""

from __future__ import annotations

import errno
import logging
import re
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from model.errors import InputError, UserError
from model.io.file_walk import regular_files

if TYPE_CHECKING:
    from model.inference.preprocessing import Volume

__all__ = [
    "DicomLimits",
    "DicomSeries",
    "DicomSeriesInfo",
    "extract_zip",
    "find_dicom_files",
    "inspect_dicom_series",
    "is_dicom_input",
    "quiet_identifying_loggers",
    "read_dicom_series",
    "scan_series",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Objects that often sit next to a series but are not slices of it.
_NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "PR", "KO", "DOC", "REG", "FID", "PLAN"}
)
# Tolerances (documented in the error messages they trigger).
_ORTHOGONALITY_TOL = 1e-3  # |row . col| and | |cosine| - 1 |
_TILT_TOL = 1e-3  # sine of the angle between a slice step and the slice normal (~0.06 degrees)
_SPACING_REL_TOL = 0.01  # slice steps may differ from the median by 1 % ...
_SPACING_ABS_TOL = 0.01  # ... or 0.01 mm, whichever is larger
_ZIP_CHUNK = MiB
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # disk full: raised as OSError, never InputError


@dataclass(frozen=True)
class DicomLimits:
    """Caps on what one series may cost to read (zip members, inflated bytes, voxels)."""

    max_files: int = 10_000
    max_total_bytes: int = 4096 * MiB
    max_voxels: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_files", "max_total_bytes", "max_voxels"):
            if getattr(self, name) < 1:
                raise ValueError(f"DicomLimits.{name} must be positive")


@dataclass(frozen=True)
class DicomSeriesInfo:
    """What the headers say about one series, slices in geometric order (torch-free)."""

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    shape: tuple[int, int, int]  # (columns, rows, slices) = (I, J, K)
    affine: np.ndarray  # 4x4 voxel -> RAS+ mm
    file_names: tuple[str, ...]  # sorted by position along the slice normal (zip: 000003_<member name>)
    sop_instance_uids: tuple[str, ...]  # same order as ``file_names``

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


@dataclass(frozen=True)
class DicomSeries:
    """A series read into HU, plus its headers (pixel data dropped) for DICOM-SEG references."""

    volume: Volume
    info: DicomSeriesInfo
    headers: tuple[Dataset, ...]  # same order as info.file_names; no PixelData


# ---------------------------------------------------------------- input kinds and files


def is_dicom_input(path: str | Path) -> bool:
    """True for a folder, a .zip archive or a ``.dcm`` file: inputs :func:`read_dicom_series` takes."""
    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    if path.suffix.lower() in (".dcm", ".dicom") or zipfile.is_zipfile(path):
        return True
    with path.open("rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def find_dicom_files(folder: Path, limits: DicomLimits = DicomLimits()) -> list[Path]:
    """Every regular file under ``folder`` (recursively, symlinks not followed), capped in count."""
    files: list[Path] = []
    for path in regular_files(folder):
        files.append(path)
        if len(files) > limits.max_files:
            raise InputError(f"{folder}: more than {limits.max_files} files; send one series")
    return files


def extract_zip(zip_path: Path, dest: Path, limits: DicomLimits = DicomLimits()) -> list[Path]:
    """Inflate the regular-file members of ``zip_path`` into ``dest`` under generated names.

    See the module docstring: member names are never used as paths, symlinks and encrypted
    members are refused, and the inflated bytes are counted against ``limits.max_total_bytes``.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{Path(zip_path).name}: not a readable zip archive ({exc})") from exc
    written: list[Path] = []
    total = 0
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > limits.max_files:
            raise InputError(f"the zip holds {len(members)} files; at most {limits.max_files} are accepted")
        declared = sum(info.file_size for info in members)
        if declared > limits.max_total_bytes:
            raise InputError(
                f"the zip inflates to {declared} bytes; at most {limits.max_total_bytes} are accepted"
            )
        for index, info in enumerate(members):
            if stat.S_ISLNK(info.external_attr >> 16):
                log.info("zip: skipping a symbolic link member")  # its name may identify the patient
                continue
            if info.flag_bits & 0x1:
                raise InputError(f"the zip member {info.filename!r} is encrypted; send an unencrypted zip")
            target = dest / f"{index:06d}_{_safe_base_name(info.filename)}"
            try:
                with archive.open(info) as src, target.open("wb") as dst:
                    while chunk := src.read(_ZIP_CHUNK):
                        total += len(chunk)
                        if total > limits.max_total_bytes:
                            raise InputError(
                                f"the zip inflates to more than {limits.max_total_bytes} bytes; "
                                "that is over this reader's limit"
                            )
                        dst.write(chunk)
            except OSError as exc:
                if exc.errno in _STORAGE_ERRNOS:  # the disk is full: not the member's fault
                    raise
                raise InputError(f"the zip member {info.filename!r} cannot be read ({exc})") from exc
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
                raise InputError(f"the zip member {info.filename!r} cannot be read ({exc})") from exc
            written.append(target)
    return written


def _safe_base_name(member: str) -> str:
    base = PurePosixPath(member.replace("\\", "/")).name
    return _UNSAFE_NAME_CHARS.sub("_", base)[:64] or "member"


# ---------------------------------------------------------------- header scan


class _Damaged(UserError):
    """A file that was meant to be a DICOM image and cannot be read as one (the reason in words)."""


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _read_header(path: Path) -> Dataset | None:
    """The dataset with pixel data deferred, or None when the file is not DICOM.

    Raises :class:`_Damaged` for a file that starts as DICOM (the ``DICM`` preamble) but cannot
    be parsed: it is most likely a slice of the series, and skipping it would be silent.
    """
    try:
        return pydicom.dcmread(path, defer_size="64 KB")
    except InvalidDicomError:
        pass
    except Exception as exc:  # pydicom raises many types on truncated or odd files
        if _has_dicom_preamble(path):
            raise _Damaged(f"not parseable ({type(exc).__name__})") from None
        return None
    try:  # files without the 128-byte preamble: accept only if they look like an instance
        ds = pydicom.dcmread(path, defer_size="64 KB", force=True)
    except Exception:
        return None
    return ds if "SOPClassUID" in ds and "Rows" in ds else None


def _is_image_storage(ds: Dataset) -> bool:
    """True when the SOP class says image storage (CT Image Storage, MR Image Storage ...)."""
    meta = getattr(ds, "file_meta", None)
    for uid in (ds.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID") if meta is not None else None):
        if uid is not None and "Image Storage" in str(getattr(uid, "name", "")):
            return True
    return False


def _has_sop_class(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return "SOPClassUID" in ds or (meta is not None and "MediaStorageSOPClassUID" in meta)


def _pixel_data_shortfall(ds: Dataset, path: Path) -> str | None:
    """Why uncompressed pixel data is shorter than the header says, or None (compressed: not checked here)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or getattr(syntax, "is_encapsulated", True):
        return None
    item = ds.get_item("PixelData")
    if item is None:
        return None
    try:
        bits = int(ds.get("BitsAllocated", 0) or 0)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8
        expected *= int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError, AttributeError):
        return None
    if bits % 8 or expected <= 0:
        return None
    length = getattr(item, "length", None)  # a deferred (raw) element: value None, its place in the file
    value = item.value
    if value is None and length is not None:
        available = min(int(length), path.stat().st_size - int(item.value_tell))
    elif isinstance(value, bytes | bytearray):
        available = len(value)
    else:
        return None
    if available < expected:
        return f"pixel data truncated ({available} of {expected} bytes)"
    return None


def _is_image(ds: Dataset) -> bool:
    if str(getattr(ds, "Modality", "")).upper() in _NON_IMAGE_MODALITIES:
        return False
    if "DirectoryRecordSequence" in ds:  # DICOMDIR
        return False
    return "Rows" in ds and "Columns" in ds


def _floats(ds: Dataset, keyword: str, count: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != (count,) or not np.isfinite(array).all():
        raise InputError(f"{where}: {keyword} is missing or malformed ({value!r})")
    return array


def _describe_series(uid: str, members: Sequence[tuple[Path, Dataset]]) -> str:
    description = str(members[0][1].get("SeriesDescription", "") or "").strip()
    label = f" ({description})" if description else ""
    return f"{uid}{label}: {len(members)} files"


_Member = tuple[Path, Dataset]


def scan_series(files: Iterable[Path], where: str) -> tuple[DicomSeriesInfo, list[tuple[Path, Dataset]]]:
    """Validate the headers of one series and sort it by geometry (pixel data not decoded).

    Returns the series' :class:`DicomSeriesInfo` and its ``(file, header)`` pairs in geometric
    order, pixel data still deferred so :func:`read_dicom_series` can decode it. ``where``
    names the input in error messages. The steps run in this order, each refusing with an
    :class:`~model.errors.InputError` (the module docstring lists what is refused).
    """
    images = _image_headers(files, where)
    series_uid, members = _single_series(images, where)
    _check_ct_slices(members, where)
    grid = _slice_grid(members, where)
    row_cos, col_cos, normal = _slice_axes(grid.orientation, where)
    members, positions, distance = _sort_along_normal(members, grid.positions, normal)
    _check_stacking(members, positions, distance, normal, grid.reference, where)
    affine = LPS_TO_RAS @ _lps_affine(row_cos, col_cos, grid.pixel_spacing, positions)
    return _series_info(series_uid, members, grid, affine), members


@dataclass
class _HeaderTriage:
    """Every input file sorted into one of four piles (``scan_series``' first step)."""

    images: list[_Member] = field(default_factory=list)
    skipped: int = 0  # not DICOM (README, .DS_Store ...)
    non_images: dict[str, int] = field(default_factory=dict)  # Modality -> count (SEG, SR, DICOMDIR ...)
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)


def _triage_headers(files: Iterable[Path]) -> _HeaderTriage:
    triage = _HeaderTriage()
    for path in files:
        try:
            ds = _read_header(path)
        except _Damaged as exc:
            triage.damaged.append((path.name, str(exc)))
            continue
        if ds is None:
            triage.skipped += 1
            continue
        if not _is_image(ds):
            why = _damaged_non_image(ds, path)
            if why is not None:
                triage.damaged.append((path.name, why))
                continue
            kind = str(ds.get("Modality", "") or "non-image").upper()
            triage.non_images[kind] = triage.non_images.get(kind, 0) + 1
            continue
        shortfall = _pixel_data_shortfall(ds, path)
        if shortfall is not None:
            triage.damaged.append((path.name, shortfall))
            continue
        triage.images.append((path, ds))
    return triage


def _damaged_non_image(ds: Dataset, path: Path) -> str | None:
    """Why a header that is not an image looks like a slice cut short, or None (a real non-image)."""
    if _is_image_storage(ds) and str(ds.get("Modality", "")).upper() not in _NON_IMAGE_MODALITIES:
        return "image header stops before Rows/Columns (truncated)"
    if not _has_sop_class(ds) and _has_dicom_preamble(path):
        return "DICOM preamble but no readable header (no SOP Class UID)"
    return None


def _image_headers(files: Iterable[Path], where: str) -> list[_Member]:
    """The image slices among ``files``; damaged files refuse the series, the rest is counted in the log."""
    triage = _triage_headers(files)
    damaged = triage.damaged
    if damaged:
        shown = "; ".join(f"{name}: {why}" for name, why in damaged[:5]) + (" ..." if len(damaged) > 5 else "")
        raise InputError(
            f"{where}: {len(damaged)} damaged DICOM file(s) ({shown}); the series would be incomplete "
            "without them: export the series again"
        )
    if triage.skipped:  # counts only: names and UIDs stay out of logs
        log.info("%d non-DICOM files skipped", triage.skipped)
    for kind, count in sorted(triage.non_images.items()):
        log.info("%d %s object(s) skipped (not image slices)", count, kind)
    if not triage.images:
        raise InputError(f"{where}: no DICOM image files found")
    return triage.images


def _single_series(images: Sequence[_Member], where: str) -> tuple[str, list[_Member]]:
    """The one SeriesInstanceUID of ``images`` and its members; several series are refused, named."""
    by_series: dict[str, list[_Member]] = {}
    for path, ds in images:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "") or "<no SeriesInstanceUID>"), []).append((path, ds))
    if len(by_series) > 1:
        listing = "; ".join(_describe_series(uid, members) for uid, members in sorted(by_series.items()))
        raise InputError(
            f"{where}: holds {len(by_series)} series, send exactly one (SeriesInstanceUIDs: {listing})"
        )
    ((series_uid, members),) = by_series.items()
    return series_uid, members


def _check_ct_slices(members: Sequence[_Member], where: str) -> None:
    """CT, single-frame, at least two slices, each with pixel data."""
    modalities = sorted({str(ds.get("Modality", "") or "").strip().upper() for _, ds in members})
    if modalities != ["CT"]:
        named = ", ".join(repr(m) if m else "missing" for m in modalities)
        raise InputError(
            f"{where}: the series' Modality is {named}, not CT; this model segments CT only "
            "(an MR or PET series would be read as if its values were Hounsfield units)"
        )
    frames = [int(ds.get("NumberOfFrames", 1) or 1) for _, ds in members]
    if max(frames) > 1:
        raise InputError(
            f"{where}: multi-frame (enhanced) DICOM images are not supported; export the series as "
            "classic single-frame images"
        )
    if len(members) == 1:
        raise InputError(
            f"{where}: a single slice ({members[0][0].name}); a 3-D series needs at least 2 slices "
            "(send the folder or zip holding the whole series)"
        )
    no_pixels = [path.name for path, ds in members if "PixelData" not in ds]
    if no_pixels:
        shown = ", ".join(no_pixels[:5]) + (" ..." if len(no_pixels) > 5 else "")
        raise InputError(f"{where}: {len(no_pixels)} image file(s) have no pixel data: {shown}")


@dataclass(frozen=True)
class _SliceGrid:
    """What every slice shares (size, orientation, pixel spacing) and where each one lies."""

    reference: Dataset  # the first file's header: the other slices were checked against it
    rows: int
    cols: int
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    pixel_spacing: np.ndarray  # PixelSpacing (2,): [row spacing, column spacing]
    positions: np.ndarray  # ImagePositionPatient (K, 3), in ``members`` order


def _slice_grid(members: Sequence[_Member], where: str) -> _SliceGrid:
    """Check that the slices share size, orientation and pixel spacing; read their positions."""
    first_path, first = members[0]
    ref_where = f"{where} ({first_path.name})"
    rows, cols = int(first.Rows), int(first.Columns)
    orientation = _floats(first, "ImageOrientationPatient", 6, ref_where)
    pixel_spacing = _floats(first, "PixelSpacing", 2, ref_where)
    if (pixel_spacing <= 0).any():
        raise InputError(f"{ref_where}: PixelSpacing must be positive, got {pixel_spacing.tolist()}")
    positions = []
    for path, ds in members:
        here = f"{where} ({path.name})"
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(f"{here}: colour images (SamplesPerPixel > 1) are not CT slices")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(
                f"{where}: slices differ in size ({first_path.name} is {rows}x{cols}, "
                f"{path.name} is {int(ds.Rows)}x{int(ds.Columns)})"
            )
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, here), orientation, atol=1e-4):
            raise InputError(
                f"{where}: slices differ in orientation (ImageOrientationPatient of {path.name} differs "
                f"from {first_path.name}); send one series with one orientation"
            )
        if not np.allclose(_floats(ds, "PixelSpacing", 2, here), pixel_spacing, rtol=1e-4, atol=1e-5):
            raise InputError(f"{where}: slices differ in PixelSpacing ({path.name} vs {first_path.name})")
        positions.append(_floats(ds, "ImagePositionPatient", 3, here))
    return _SliceGrid(first, rows, cols, orientation, pixel_spacing, np.stack(positions))


def _slice_axes(orientation: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row and column direction cosines and the slice normal ``row x column``."""
    row_cos, col_cos = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row_cos) - 1) > _ORTHOGONALITY_TOL
        or abs(np.linalg.norm(col_cos) - 1) > _ORTHOGONALITY_TOL
        or abs(float(row_cos @ col_cos)) > _ORTHOGONALITY_TOL
    ):
        raise InputError(
            f"{where}: ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors "
            "(non-orthogonal or skewed slices cannot be represented)"
        )
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    return row_cos, col_cos, np.cross(row_cos, col_cos)


def _sort_along_normal(
    members: Sequence[_Member], positions: np.ndarray, normal: np.ndarray
) -> tuple[list[_Member], np.ndarray, np.ndarray]:
    """Members, positions and distances along ``normal``, ascending (stable for equal distances)."""
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    return [members[i] for i in order], positions[order], distance[order]


def _check_stacking(
    members: Sequence[_Member], pos: np.ndarray, distance: np.ndarray, normal: np.ndarray, reference: Dataset,
    where: str,
) -> None:
    """Sorted slices: no two at one position, stacked along the normal (no tilt), evenly spaced."""
    steps = np.diff(distance)
    if (steps < _SPACING_ABS_TOL).any():
        k = int(np.argmin(steps))
        raise InputError(
            f"{where}: {members[k][0].name} and {members[k + 1][0].name} lie at the same position "
            f"({distance[k]:.3f} mm along the slice normal); the folder mixes acquisitions or repeats slices"
        )
    deltas = np.diff(pos, axis=0)
    sines = np.linalg.norm(np.cross(deltas, normal), axis=1) / np.linalg.norm(deltas, axis=1)
    if (sines > _TILT_TOL).any():
        angle = float(np.degrees(np.arcsin(min(1.0, float(sines.max())))))
        tilt = reference.get("GantryDetectorTilt")
        stated = f"; GantryDetectorTilt {tilt}" if tilt not in (None, "") else ""
        raise InputError(
            f"{where}: gantry tilt or sheared stack: slice positions deviate {angle:.2f} degrees from the "
            f"slice normal{stated}. Resample the series to an orthogonal grid first (e.g. dcm2niix, which "
            "corrects gantry tilt)"
        )
    median = float(np.median(steps))
    tolerance = max(_SPACING_ABS_TOL, _SPACING_REL_TOL * median)
    if (np.abs(steps - median) > tolerance).any():
        raise InputError(
            f"{where}: inconsistent slice spacing ({steps.min():.3f} to {steps.max():.3f} mm between "
            f"neighbouring slices, median {median:.3f} mm); slices may be missing"
        )


def _lps_affine(row_cos: np.ndarray, col_cos: np.ndarray, pixel_spacing: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Voxel -> LPS mm for sorted slice positions ``pos`` (the module docstring's formula)."""
    step = (pos[-1] - pos[0]) / (len(pos) - 1)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * pixel_spacing[1]
    affine_lps[:3, 1] = col_cos * pixel_spacing[0]
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = pos[0]
    return affine_lps


def _series_info(series_uid: str, members: Sequence[_Member], grid: _SliceGrid, affine: np.ndarray) -> DicomSeriesInfo:
    first = grid.reference
    return DicomSeriesInfo(
        series_instance_uid=series_uid,
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.get("Modality", "")),
        shape=(grid.cols, grid.rows, len(members)),
        affine=affine,
        file_names=tuple(path.name for path, _ in members),
        sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "")) for _, ds in members),
    )


# ---------------------------------------------------------------- logging


# Libraries that log identifiers at INFO: highdicom names every source dataset by its SOP
# Instance UID while it copies patient and study attributes into a SEG.
IDENTIFYING_LOGGERS = ("highdicom",)


def quiet_identifying_loggers() -> None:
    """Raise :data:`IDENTIFYING_LOGGERS` to WARNING, so INFO logs carry no UIDs (idempotent).

    Called by :func:`read_dicom_series` (the worker and the CLI read a series before they write
    its SEG); a logger already set above WARNING on purpose is left alone.
    """
    for name in IDENTIFYING_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


# ---------------------------------------------------------------- public readers


def _check_voxels(info: DicomSeriesInfo, where: str, limits: DicomLimits) -> None:
    voxels = info.shape[0] * info.shape[1] * info.shape[2]
    if voxels > limits.max_voxels:
        raise InputError(f"{where}: the series has {voxels} voxels; at most {limits.max_voxels} are accepted")


def _with_files(path: Path, limits: DicomLimits, scratch: Path) -> tuple[list[Path], str]:
    if path.is_dir():
        return find_dicom_files(path, limits), str(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    if zipfile.is_zipfile(path):
        return extract_zip(path, scratch, limits), path.name
    return [path], str(path)


def inspect_dicom_series(path: str | Path, limits: DicomLimits = DicomLimits()) -> DicomSeriesInfo:
    """Validate a series' headers (folder, .zip or file) without decoding pixels; torch-free."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="latentseg-dicom-") as scratch:
        files, where = _with_files(path, limits, Path(scratch))
        info, _ = scan_series(files, where)
        _check_voxels(info, where, limits)
        return info


def _slice_hu(ds: Dataset, path: Path) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # missing decoders (JPEG 2000, JPEG-LS) and damaged data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise InputError(f"{path.name}: pixel data cannot be decoded (transfer syntax {name}: {exc})") from exc
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_dicom_series(path: str | Path, limits: DicomLimits = DicomLimits()) -> DicomSeries:
    """Read one series (a folder, a .zip of one series, or a file) into HU on its own grid.

    Errors are :class:`InputError`; see the module docstring for what is refused.
    """
    from model.inference.preprocessing import Volume, check_affine, sanitize_hu

    quiet_identifying_loggers()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="latentseg-dicom-") as scratch:
        files, where = _with_files(path, limits, Path(scratch))
        info, members = scan_series(files, where)
        _check_voxels(info, where, limits)
        check_affine(info.affine, where)
        data = np.empty(info.shape, dtype=np.float32)
        kept: list[Dataset] = []
        for k, (file, ds) in enumerate(members):
            hu = _slice_hu(ds, file)
            if hu.shape != (info.shape[1], info.shape[0]):
                raise InputError(f"{file.name}: pixel data has shape {hu.shape}, the header says "
                                 f"{info.shape[1]}x{info.shape[0]}")
            data[:, :, k] = hu.T
            del ds.PixelData  # keep only the header (the SEG writer needs no pixels)
            kept.append(ds)
    return DicomSeries(volume=Volume(data=sanitize_hu(data), affine=info.affine), info=info, headers=tuple(kept))
