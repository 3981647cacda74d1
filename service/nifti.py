"""NIfTI header checks on a stored upload, before anything is queued (nibabel; no voxel data read).

:class:`NotNifti` means the bytes are not a NIfTI-1/2 file at all (HTTP 415);
:class:`MalformedNifti` means a NIfTI header that cannot describe a single 3-D CT volume (422).
Only the header bytes are read (decompressed on the fly for ``.nii.gz``), so a huge or hostile
file costs no memory here.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MalformedNifti", "NotNifti", "VolumeInfo", "check_nifti_header"]

NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
_ALLOWED_DTYPES = frozenset(
    np.dtype(t).str[1:] for t in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64")
)


class NotNifti(ValueError):
    """Not a NIfTI file (HTTP 415)."""


class MalformedNifti(ValueError):
    """A NIfTI header we cannot segment (HTTP 422)."""


@dataclass(frozen=True)
class VolumeInfo:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dtype: str


def _read_head(path: Path, size: int) -> tuple[bytes, bool]:
    """The first ``size`` (decompressed) bytes, and whether the file is gzip-compressed."""
    with path.open("rb") as raw:
        magic = raw.read(2)
    try:
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as fh:
                return fh.read(size), True
        with path.open("rb") as fh:
            return fh.read(size), False
    except (OSError, EOFError, zlib.error) as exc:
        raise NotNifti(f"the upload is a damaged gzip stream ({exc})") from exc


def _header(head: bytes) -> object:
    import nibabel as nib

    if len(head) < NIFTI1_HEADER_BYTES:
        raise NotNifti(f"the upload is too short to be NIfTI ({len(head)} bytes; a header has {NIFTI1_HEADER_BYTES})")
    for order in ("<", ">"):
        (sizeof_hdr,) = struct.unpack(order + "i", head[:4])
        if sizeof_hdr == NIFTI1_HEADER_BYTES and head[344:348] in (b"n+1\x00", b"ni1\x00"):
            return nib.Nifti1Header.from_fileobj(io.BytesIO(head[:NIFTI1_HEADER_BYTES]), check=False)
        if sizeof_hdr == NIFTI2_HEADER_BYTES and head[4:8] in (b"n+2\x00", b"ni2\x00"):
            if len(head) < NIFTI2_HEADER_BYTES:
                raise NotNifti("the upload is too short for a NIfTI-2 header")
            return nib.Nifti2Header.from_fileobj(io.BytesIO(head[:NIFTI2_HEADER_BYTES]), check=False)
    raise NotNifti("the upload is not a NIfTI-1/NIfTI-2 file (no valid sizeof_hdr/magic); send .nii or .nii.gz")


def check_nifti_header(path: Path, *, max_voxels: int) -> VolumeInfo:
    """Validate the header of the stored upload at ``path``; see the module docstring."""
    path = Path(path)
    head, gzipped = _read_head(path, NIFTI2_HEADER_BYTES)
    header = _header(head)
    try:
        shape = tuple(int(d) for d in header.get_data_shape())  # type: ignore[attr-defined]
        dtype = np.dtype(header.get_data_dtype())  # type: ignore[attr-defined]
        zooms = tuple(float(z) for z in header.get_zooms())  # type: ignore[attr-defined]
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)  # type: ignore[attr-defined]
        vox_offset = int(header["vox_offset"])  # type: ignore[index]
    except Exception as exc:  # nibabel raises many types for nonsense headers
        raise MalformedNifti(f"the NIfTI header cannot be read: {exc}") from exc

    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise MalformedNifti(f"expected one 3-D volume, got dimensions {shape}")
    if min(shape) < 1:
        raise MalformedNifti(f"every dimension must be at least 1, got {shape}")
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise MalformedNifti(f"the volume has {voxels} voxels; this server accepts at most {max_voxels}")
    if dtype.str[1:] not in _ALLOWED_DTYPES:
        raise MalformedNifti(f"voxel type {dtype} is not supported; use an integer or float type")
    spacing = zooms[:3]
    if not all(math.isfinite(z) and z > 0 for z in spacing):
        raise MalformedNifti(f"voxel spacing must be positive and finite, got {spacing}")
    if not np.all(np.isfinite(affine)) or abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12:
        raise MalformedNifti("the affine (qform/sform) is not finite and invertible")
    if not gzipped:
        needed = vox_offset + voxels * dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            raise MalformedNifti(f"the file is truncated: the header describes {needed} bytes, the file has {size}")
    return VolumeInfo(shape=(shape[0], shape[1], shape[2]), spacing=(spacing[0], spacing[1], spacing[2]), dtype=str(dtype))
