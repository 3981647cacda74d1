"""The DICOM upload validator: a .zip of one CT series -> a canonical ``input.zip`` of its slices.

:func:`normalize_dicom_upload` runs inside the sandbox subprocess (:mod:`service.uploads.upload_sandbox`),
like the NIfTI validator, so a native crash in inflating or parsing cannot take the API down.
It is torch-free (pydicom and numpy, through :mod:`model.io.dicom_io`).

- The archive is inflated by :func:`model.io.dicom_io.extract_zip`: member names are never used as
  paths (zip slip cannot escape), symbolic links are skipped, and the member count and the
  bytes actually inflated are capped (``max_dicom_files``, ``max_decompressed_bytes``), which
  stops zip bombs at the cap.
- The headers are checked by :func:`model.io.dicom_io.scan_series` without decoding pixels: one
  series, at least two slices, consistent size/spacing/orientation, no gantry tilt, even
  slice spacing. The voxel count is capped (``max_voxels``) and one slice is decoded, so a
  transfer syntax this install cannot decode is refused now rather than failing the job.
- The canonical copy holds only the series' image files, in geometric order, under generated
  names (``slice_00000.dcm``...): nothing else the client put in the zip (other files, its
  member names) reaches storage, a worker or a log. The DICOM files themselves are kept byte
  for byte: the DICOM-SEG must copy patient and study attributes from them.

Refusals map to HTTP answers as for NIfTI: :class:`~service.uploads.nifti.NotNifti` 415 (not a zip of
DICOM images), :class:`~service.uploads.nifti.UploadTooBig` 413, :class:`~service.uploads.nifti.MalformedNifti`
422. Messages may quote the client's member names and series descriptions (it is their data);
the API never logs them.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from service.uploads.nifti import MalformedNifti, NotNifti, UploadLimits, UploadRejected, UploadTooBig, VolumeInfo

__all__ = ["ZIP_MAGICS", "is_zip_upload", "normalize_dicom_upload"]

# Local file header, and the end-of-central-directory record of an empty archive.
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
WHERE = "the zip"
SLICE_NAME = "slice_{:05d}.dcm"


def is_zip_upload(path: Path) -> bool:
    """True when the upload starts like a zip archive (its bytes decide, never a filename)."""
    with Path(path).open("rb") as fh:
        return fh.read(4) in ZIP_MAGICS


def _refusal(message: str) -> UploadRejected:
    """Classify a :class:`model.errors.InputError` from model.io.dicom_io by what it is about."""
    if "not a readable zip archive" in message:
        return NotNifti("the upload starts like a zip archive but cannot be read as one; send a .zip of one "
                        "DICOM series or a NIfTI volume")
    if "inflates to" in message or ("files; at most" in message):
        return UploadTooBig(message)
    if "no DICOM image files found" in message:
        return NotNifti("the zip holds no DICOM image files; send a .zip of one DICOM CT series (or a NIfTI volume)")
    return MalformedNifti(message)


def normalize_dicom_upload(src: Path, dst: Path, limits: UploadLimits) -> VolumeInfo:
    """Validate the zip at ``src`` and write the canonical series zip to ``dst`` (module docstring).

    On any refusal ``dst`` is removed and an :class:`~service.uploads.nifti.UploadRejected` is raised.
    """
    from model.io.dicom_io import DicomLimits, extract_zip, scan_series
    from model.errors import InputError

    dst = Path(dst)
    dicom_limits = DicomLimits(
        max_files=limits.max_dicom_files, max_total_bytes=limits.max_decompressed_bytes, max_voxels=limits.max_voxels
    )
    scratch = Path(tempfile.mkdtemp(prefix=".dicom-check-", dir=dst.parent))
    try:
        try:
            files = extract_zip(Path(src), scratch, dicom_limits)
            info, members = scan_series(files, WHERE)
        except InputError as exc:
            raise _refusal(str(exc)) from None
        voxels = info.shape[0] * info.shape[1] * info.shape[2]
        if voxels > limits.max_voxels:
            raise UploadTooBig(f"the series has {voxels} voxels; this server accepts at most {limits.max_voxels}")
        dtype = _decode_one(members[len(members) // 2][0])
        with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as archive:
            for k, (path, _) in enumerate(members):
                archive.write(path, arcname=SLICE_NAME.format(k))
        return VolumeInfo(shape=info.shape, spacing=info.spacing, dtype=dtype)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _decode_one(path: Path) -> str:
    """Decode one slice's pixels: an undecodable transfer syntax is refused before a job is queued."""
    import pydicom

    syntax = "unknown"
    try:
        ds = pydicom.dcmread(path)
        syntax = str(getattr(ds.file_meta.get("TransferSyntaxUID"), "name", None) or syntax)
        pixels = ds.pixel_array
    except Exception as exc:
        raise MalformedNifti(
            f"the series' pixel data cannot be decoded (transfer syntax {syntax}: {type(exc).__name__}); "
            "send uncompressed or losslessly compressed slices this server can read"
        ) from None
    return str(pixels.dtype)
