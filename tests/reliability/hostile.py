"""Builders for hostile and broken uploads: valid NIfTI bytes, then raw header patches.

Patching the bytes (not nibabel's header object) keeps nibabel from "fixing" the fields we
want broken. Offsets are those of the NIfTI-1 header (little-endian as nibabel writes it).
"""

from __future__ import annotations

import gzip
import struct
import zlib

import nibabel as nib
import numpy as np

OFFSETS = {
    "sizeof_hdr": (0, "<i"),
    "dim": (40, "<8h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim": (76, "<8f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "srow_x": (280, "<4f"),
    "magic": (344, "4s"),
}
PRIVATE = {
    "descrip": b"PATIENT Jane Roe MRN 0042",
    "aux_file": b"jane_roe_aux",
    "intent_name": b"roe-intent",
    "db_name": b"roe-db",
}
EXTENSION_TEXT = b"DICOM PatientName=Roe^Jane PatientID=0042"


def nifti_bytes(
    array: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    *,
    private: bool = False,
) -> bytes:
    """Uncompressed single-file NIfTI-1 bytes (vox_offset 352, or more with an extension)."""
    data = np.zeros((8, 8, 4), np.int16) if array is None else array
    image = nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine)
    if private:
        image.header["descrip"] = PRIVATE["descrip"]
        image.header["aux_file"] = PRIVATE["aux_file"]
        image.header["intent_name"] = PRIVATE["intent_name"]
        image.header["db_name"] = PRIVATE["db_name"]
        image.header.extensions.append(nib.nifti1.Nifti1Extension(6, EXTENSION_TEXT))
    return bytes(image.to_bytes())


def patch(raw: bytes, field: str, *values: object) -> bytes:
    offset, fmt = OFFSETS[field]
    packed = struct.pack(fmt, *values)
    return raw[:offset] + packed + raw[offset + len(packed) :]


def read_field(raw: bytes, field: str) -> tuple[object, ...]:
    offset, fmt = OFFSETS[field]
    return struct.unpack_from(fmt, raw, offset)


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=1)


def gzip_bomb(prefix: bytes, zeros: int) -> bytes:
    """``prefix`` then ``zeros`` zero bytes, gzip-compressed (about 1000:1) without building them in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(prefix)]
    block = bytes(1 << 20)
    remaining = zeros
    while remaining > 0:
        parts.append(compressor.compress(block[: min(remaining, len(block))]))
        remaining -= len(block)
    parts.append(compressor.flush())
    return b"".join(parts)
