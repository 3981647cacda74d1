"""The upload validator: checks a NIfTI header, then writes a canonical, privacy-clean copy.

:func:`normalize_upload` turns a client's bytes (``.nii`` or ``.nii.gz``) into
``input.nii``: a fresh single-file header followed by exactly the voxel bytes that header
describes. Nothing else survives, so hostile or private content never reaches a worker, an
output or a log:

- The header is parsed from its first 348/540 decompressed bytes and checked before any voxel
  is read or any array allocated: ``sizeof_hdr`` and single-file magic (``n+1``/``n+2``),
  dimensions (3-D, or 4-D with one volume), the datatype allowlist, positive finite
  ``pixdim``, a finite non-singular affine, finite scaling, the voxel cap and the
  decompressed-size cap.
- Decompression is bounded: only ``vox_offset + voxels * itemsize`` bytes are ever inflated, so
  a gzip bomb stops at the cap and trailing data (after the voxels or after the gzip stream) is
  cut off. A stream that ends early is "truncated".
- Privacy: the text fields ``descrip``, ``aux_file``, ``intent_name``, ``db_name`` (and the legacy
  ``data_type``) are blanked, and header extensions (which can hold DICOM tags) are dropped.
- NaN/Inf policy: float voxels are counted while copied. With ``reject_nonfinite`` any non-finite
  voxel refuses the upload (422); otherwise they are kept and the model maps them at load time
  (``model.inference.preprocessing.sanitize_hu``: NaN -> -1024 HU, +Inf -> 4095, -Inf -> -1024), and the
  count is reported in the job record.

Error classes map to HTTP answers: :class:`NotNifti` 415, :class:`MalformedNifti` 422,
:class:`UploadTooBig` 413. Messages say what is wrong in numbers and never quote header text.

This module runs inside the sandbox subprocess (:mod:`service.uploads.upload_sandbox`) so that a native
crash in decompression or parsing cannot take the API down; it is also imported directly by
tests and the fuzz harness. It never imports torch.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from model.errors import UserError

__all__ = [
    "ALLOWED_DTYPES",
    "MalformedNifti",
    "NotNifti",
    "UploadLimits",
    "UploadRejected",
    "UploadTooBig",
    "VolumeInfo",
    "normalize_upload",
    "parse_header",
]

NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
GZIP_MAGIC = b"\x1f\x8b"
# Voxel types a CT volume may arrive in. Not: bool/bit, complex, RGB, float16, float128.
ALLOWED_DTYPES = frozenset(("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64"))
PRIVATE_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name", "data_type")
MAX_EXTENSION_BYTES = 16 * 1024 * 1024  # a vox_offset further than this after the header is refused
_COPY_BLOCK = 1 << 20
_READ_BLOCK = 64 * 1024


class UploadRejected(UserError, ValueError):
    """Base of the validator's refusals; ``status`` is the HTTP answer."""

    status = 422


class NotNifti(UploadRejected):
    """Not a NIfTI file (HTTP 415)."""

    status = 415


class MalformedNifti(UploadRejected):
    """A NIfTI file we cannot segment (HTTP 422)."""

    status = 422


class UploadTooBig(UploadRejected):
    """The volume exceeds a size limit (HTTP 413)."""

    status = 413


@dataclass(frozen=True)
class UploadLimits:
    max_voxels: int
    max_decompressed_bytes: int
    reject_nonfinite: bool = False
    max_dicom_files: int = 10_000  # members of a DICOM series zip (service.uploads.dicom_upload)


@dataclass(frozen=True)
class VolumeInfo:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dtype: str
    nonfinite_voxels: int = 0


@dataclass(frozen=True)
class ParsedHeader:
    """A checked header: what the copy needs, and the sanitised header bytes to write."""

    info: VolumeInfo
    vox_offset: int
    data_bytes: int
    clean_header: bytes  # header + 4-byte empty extension flag; data follows immediately


# ---------------------------------------------------------------- bounded reading


class _BoundedSource:
    """Reads decompressed bytes from a plain or gzip file, never inflating more than asked for.

    Concatenated gzip members are read as one stream (as gzip does); anything after the last
    member that is not another member is ignored (trailing data).
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        head = raw.read(2)
        self.gzipped = head == GZIP_MAGIC
        self._pending = head  # compressed (or plain) bytes not yet consumed
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzipped else None
        self._ended = False

    def read_exact(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the stream."""
        parts: list[bytes] = []
        want = n
        while want > 0 and not self._ended:
            chunk = self._read_some(want)
            if not chunk:
                continue
            parts.append(chunk)
            want -= len(chunk)
        return b"".join(parts)

    def _feed(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return self._raw.read(_READ_BLOCK)

    def _read_some(self, want: int) -> bytes:
        if self._inflater is None:
            data = self._feed()
            if not data:
                self._ended = True
                return b""
            if len(data) > want:
                self._pending = data[want:]
                data = data[:want]
            return data
        inflater = self._inflater
        if inflater.unconsumed_tail:
            source = inflater.unconsumed_tail
        else:
            source = self._feed()
            if not source:
                if not inflater.eof:
                    # The compressed stream stops mid-member: whatever came out is all there is.
                    self._ended = True
                    return inflater.flush()[:want]
                self._ended = True
                return b""
        try:
            out = inflater.decompress(source, want)
        except zlib.error as exc:
            raise NotNifti(f"the upload is a damaged gzip stream, not a .nii.gz NIfTI ({exc})") from exc
        if inflater.eof:
            rest = inflater.unused_data
            if len(rest) < 2:
                rest += self._raw.read(2 - len(rest))
            if rest[:2] == GZIP_MAGIC:  # another gzip member follows
                self._pending = rest
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                self._ended = True  # trailing data after the gzip stream: cut off
        return out


# ---------------------------------------------------------------- header


def _finite(x: float) -> bool:
    return math.isfinite(x)


def parse_header(head: bytes, limits: UploadLimits) -> ParsedHeader:
    """Check the first bytes of a (decompressed) upload; raises an :class:`UploadRejected`.

    The checks run in this order, before any voxel is read (see the module docstring).
    """
    kind, size = _header_kind(head)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel warns about the nonsense headers refused here
        header, fields = _read_fields(kind, head[:size])
        shape = _volume_shape(fields.shape)
        _check_dtype(fields.dtype, fields.code)
        spacing = _spacing(fields.pixdim)
        _check_scaling(fields.slope, fields.inter)
        voxels = _voxel_count(shape, limits)
        vox_offset = _vox_offset(fields.vox_offset, size)
        data_bytes = _data_bytes(voxels, fields.dtype, vox_offset, limits)
        _check_affine(header)
        clean = _clean_header(header, size)
    info = VolumeInfo(shape=shape, spacing=spacing, dtype=fields.dtype.name)
    return ParsedHeader(info=info, vox_offset=vox_offset, data_bytes=data_bytes, clean_header=clean)


@dataclass(frozen=True)
class _HeaderFields:
    """The raw header fields the checks read, as nibabel parsed them (nothing checked yet but ``dim[0]``)."""

    shape: tuple[int, ...]  # dim[1 : dim[0] + 1]
    code: int  # NIfTI datatype code
    dtype: np.dtype[Any]
    pixdim: tuple[float, ...]
    vox_offset: float
    slope: float
    inter: float


def _header_kind(head: bytes) -> tuple[Any, int]:
    """The nibabel header class and header size that ``sizeof_hdr`` and the magic name (single-file only)."""
    import nibabel as nib

    if len(head) < NIFTI1_HEADER_BYTES:
        raise NotNifti(
            f"the upload is too short to be NIfTI ({len(head)} bytes; a header has {NIFTI1_HEADER_BYTES}); "
            "send .nii or .nii.gz"
        )
    kind: type | None = None
    size = 0
    for order in ("<", ">"):
        (sizeof_hdr,) = struct.unpack(order + "i", head[:4])
        if sizeof_hdr == NIFTI1_HEADER_BYTES and head[344:348] in (b"n+1\x00", b"ni1\x00"):
            kind, size, magic = nib.Nifti1Header, NIFTI1_HEADER_BYTES, head[344:348]
            break
        if sizeof_hdr == NIFTI2_HEADER_BYTES and head[4:8] in (b"n+2\x00", b"ni2\x00"):
            if len(head) < NIFTI2_HEADER_BYTES:
                raise NotNifti("the upload is too short for a NIfTI-2 header")
            kind, size, magic = nib.Nifti2Header, NIFTI2_HEADER_BYTES, head[4:8]
            break
    if kind is None:
        raise NotNifti("the upload is not a NIfTI-1/NIfTI-2 file (no valid sizeof_hdr/magic); send .nii or .nii.gz")
    if magic[1:2] == b"i":
        raise MalformedNifti("the header belongs to a .hdr/.img pair (magic ni1/ni2); send a single-file .nii")
    return kind, size


def _read_fields(kind: Any, block: bytes) -> tuple[Any, _HeaderFields]:
    """nibabel's header over ``block`` and the fields the checks need; any nibabel failure is a 422."""
    try:
        header = kind.from_fileobj(io.BytesIO(block), check=False)
        dim = [int(d) for d in header["dim"]]
        ndim = dim[0]
        if not 1 <= ndim <= 7:
            raise MalformedNifti(f"dim[0] must be 1..7, got {ndim}")
        code = int(header["datatype"])
        try:
            dtype = np.dtype(header.get_data_dtype())
        except Exception as exc:
            raise MalformedNifti(f"unknown NIfTI datatype code {code}") from exc
        fields = _HeaderFields(
            shape=tuple(dim[1 : ndim + 1]),
            code=code,
            dtype=dtype,
            pixdim=tuple(float(p) for p in header["pixdim"]),
            vox_offset=float(header["vox_offset"]),
            slope=float(header["scl_slope"]),
            inter=float(header["scl_inter"]),
        )
    except UploadRejected:
        raise
    except Exception as exc:  # nibabel raises many types for nonsense headers
        raise MalformedNifti(f"the NIfTI header cannot be read ({type(exc).__name__})") from exc
    return header, fields


def _volume_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """One 3-D volume (a 4-D file with one volume counts), every dimension at least 1."""
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise MalformedNifti(f"expected one 3-D volume (or 4-D with one volume), got dimensions {shape}")
    if min(shape) < 1:
        raise MalformedNifti(f"every dimension must be at least 1, got {shape}")
    return (shape[0], shape[1], shape[2])


def _check_dtype(dtype: np.dtype[Any], code: int) -> None:
    if dtype.name not in ALLOWED_DTYPES:
        raise MalformedNifti(
            f"voxel datatype {dtype.name} (NIfTI code {code}) is not supported; use one of {', '.join(sorted(ALLOWED_DTYPES))}"
        )


def _spacing(pixdim: tuple[float, ...]) -> tuple[float, float, float]:
    spacing = tuple(pixdim[1:4])
    if not all(_finite(z) and z > 0 for z in spacing):
        raise MalformedNifti(f"voxel spacing (pixdim[1:4]) must be positive and finite, got {spacing}")
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _check_scaling(slope: float, inter: float) -> None:
    """NaN scaling means "none" in NIfTI; only infinities are refused."""
    if not (_finite(slope) or math.isnan(slope)) or not (_finite(inter) or math.isnan(inter)):
        raise MalformedNifti("the intensity scaling (scl_slope/scl_inter) is infinite")


def _voxel_count(shape: tuple[int, int, int], limits: UploadLimits) -> int:
    voxels = math.prod(shape)
    if voxels > limits.max_voxels:
        raise UploadTooBig(f"the volume has {voxels} voxels; this server accepts at most {limits.max_voxels}")
    return voxels


def _vox_offset(raw: float, size: int) -> int:
    """A whole byte offset after the header and its 4-byte extension flag, at most MAX_EXTENSION_BYTES further."""
    if not _finite(raw) or raw != int(raw):
        raise MalformedNifti("vox_offset is not a whole number of bytes")
    vox_offset = int(raw)
    if not size + 4 <= vox_offset <= size + 4 + MAX_EXTENSION_BYTES:
        raise MalformedNifti(
            f"vox_offset {vox_offset} is outside {size + 4}..{size + 4 + MAX_EXTENSION_BYTES} for a single-file NIfTI"
        )
    return vox_offset


def _data_bytes(voxels: int, dtype: np.dtype[Any], vox_offset: int, limits: UploadLimits) -> int:
    """The voxel bytes, checked with the offset against the decompressed-size cap."""
    data_bytes = voxels * dtype.itemsize
    if vox_offset + data_bytes > limits.max_decompressed_bytes:
        raise UploadTooBig(
            f"the volume needs {vox_offset + data_bytes} bytes uncompressed; "
            f"this server accepts at most {limits.max_decompressed_bytes}"
        )
    return data_bytes


def _check_affine(header: Any) -> None:
    """The best affine (sform, else qform) is computable, finite and not singular."""
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as exc:
        raise MalformedNifti(f"the affine (qform/sform) cannot be computed ({type(exc).__name__})") from exc
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise MalformedNifti("the affine (qform/sform) is not finite")
    det = float(np.linalg.det(affine[:3, :3]))
    if not math.isfinite(det) or abs(det) < 1e-6:
        raise MalformedNifti("the affine (qform/sform) is singular (zero voxel size or degenerate axes)")


def _clean_header(header: Any, size: int) -> bytes:
    """The header with its private text fields blanked, voxels right after an empty extension flag."""
    for name in PRIVATE_TEXT_FIELDS:
        if name in header.keys():
            header[name] = b""
    header.set_data_offset(size + 4)
    return header.binaryblock + b"\x00\x00\x00\x00"


# ---------------------------------------------------------------- whole upload


def normalize_upload(src: Path, dst: Path, limits: UploadLimits) -> VolumeInfo:
    """Validate the upload at ``src`` and write its canonical copy to ``dst`` (see the module docstring).

    On any refusal ``dst`` is removed and an :class:`UploadRejected` is raised.
    """
    dst = Path(dst)
    try:
        with Path(src).open("rb") as raw:
            source = _BoundedSource(raw)
            head = source.read_exact(NIFTI2_HEADER_BYTES)
            parsed = parse_header(head, limits)
            return _copy_voxels(source, head, parsed, dst, limits)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def _copy_voxels(source: _BoundedSource, head: bytes, parsed: ParsedHeader, dst: Path, limits: UploadLimits) -> VolumeInfo:
    info = parsed.info
    dtype = np.dtype(info.dtype)
    # ``head`` may already hold the start of the extensions or even the voxels.
    consumed = len(head)
    header_size = len(parsed.clean_header) - 4
    skip = parsed.vox_offset - consumed
    if skip > 0:
        rest = source.read_exact(skip)  # at most MAX_EXTENSION_BYTES: checked in parse_header
        if len(rest) < skip:
            raise MalformedNifti(f"the file is truncated: the header says the voxels start at byte {parsed.vox_offset}")
        extensions = head[header_size:] + rest
        carried = b""
    else:
        extensions = head[header_size : parsed.vox_offset]
        carried = head[parsed.vox_offset :][: parsed.data_bytes]
    byte_order = ">" if _big_endian(parsed.clean_header) else "<"
    _check_extensions(extensions, byte_order)
    typed = dtype.newbyteorder(byte_order) if dtype.itemsize > 1 else dtype
    is_float = dtype.kind == "f"
    nonfinite = 0
    written = 0
    block = max(dtype.itemsize, (_COPY_BLOCK // dtype.itemsize) * dtype.itemsize)
    with dst.open("wb") as out:
        out.write(parsed.clean_header)
        while written < parsed.data_bytes:
            want = min(block, parsed.data_bytes - written)
            if carried:  # ``carried`` is shorter than one block
                chunk, carried = carried + source.read_exact(want - len(carried)), b""
            else:
                chunk = source.read_exact(want)
            if is_float:
                aligned = len(chunk) - len(chunk) % dtype.itemsize
                values = np.frombuffer(chunk[:aligned], dtype=typed)
                nonfinite += int(values.size - np.count_nonzero(np.isfinite(values)))
            out.write(chunk)
            written += len(chunk)
            if len(chunk) < want:
                break
    if written < parsed.data_bytes:
        raise MalformedNifti(
            f"the file is truncated: the header describes {parsed.data_bytes} voxel bytes, the upload has {written}"
        )
    if nonfinite and limits.reject_nonfinite:
        raise MalformedNifti(f"the volume has {nonfinite} NaN/Inf voxels; this server refuses non-finite voxels")
    return VolumeInfo(shape=info.shape, spacing=info.spacing, dtype=info.dtype, nonfinite_voxels=nonfinite)


def _check_extensions(region: bytes, byte_order: str) -> None:
    """``region`` runs from the extension flag to ``vox_offset``: flagged extensions must end before
    the voxels, so extension bytes (which may hold DICOM tags) are never copied as voxel data."""
    if len(region) < 4 or region[0] == 0:
        return
    position = 4
    while position + 8 <= len(region):
        (esize,) = struct.unpack(byte_order + "i", region[position : position + 4])
        if esize == 0:
            return  # padding up to vox_offset
        if esize < 16 or esize % 16 or position + esize > len(region):
            raise MalformedNifti("a header extension runs into the voxel data (extension sizes and vox_offset disagree)")
        position += esize
    if position == 4:
        raise MalformedNifti("the header announces extensions but vox_offset leaves no room for them")


def _big_endian(header: bytes) -> bool:
    (little,) = struct.unpack("<i", header[:4])
    return little not in (NIFTI1_HEADER_BYTES, NIFTI2_HEADER_BYTES)
