"""Fuzz harness for the upload validator (:func:`service.uploads.nifti.normalize_upload`), hypothesis-based.

Inputs are valid NIfTI-1 seeds (plain and gzip, with private header text and an extension)
put through structured mutations: header fields overwritten with hostile values (huge/negative
dims, odd datatypes, NaN/Inf pixdim and scaling, wild vox_offset), random byte flips,
truncation, appended garbage and gzip wrapping/cutting. The property, for every input:

- the validator either returns a :class:`~service.uploads.nifti.VolumeInfo` or raises an
  :class:`~service.uploads.nifti.UploadRejected` (413/415/422), never anything else;
- when it accepts, the canonical copy is exactly header + extension flag + the voxels
  (``352 + voxels * itemsize`` bytes), re-parses to the same shape, and never contains the
  private header text; extension bytes only when the (mutated) header itself declares them to
  be voxels (no extension flag and a ``vox_offset`` pointing at them);
- it never writes more than the decompressed cap.

Run briefly in CI through ``tests/reliability/test_fuzz_validator.py``; run longer with
``python -m fuzz.upload_validator --examples 20000``.
"""

from __future__ import annotations

import argparse
import gzip
import math
import struct
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.uploads.nifti import UploadLimits, UploadRejected, VolumeInfo, normalize_upload

__all__ = ["LIMITS", "check_one", "hostile_uploads", "run"]

LIMITS = UploadLimits(max_voxels=200_000, max_decompressed_bytes=1_000_000)
SECRETS = (b"FUZZ-PATIENT-NAME", b"FUZZ-EXTENSION")
FIELDS: dict[str, tuple[int, str]] = {
    "sizeof_hdr": (0, "<i"),
    "dim0": (40, "<h"),
    "dim1": (42, "<h"),
    "dim2": (44, "<h"),
    "dim3": (46, "<h"),
    "dim4": (48, "<h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim0": (76, "<f"),
    "pixdim1": (80, "<f"),
    "pixdim2": (84, "<f"),
    "pixdim3": (88, "<f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern_b": (256, "<f"),
    "srow_x0": (280, "<f"),
    "srow_y1": (300, "<f"),
    "srow_z2": (320, "<f"),
}
_FLOATS = st.one_of(
    st.sampled_from([0.0, -1.0, 1.0, 1e-30, 1e30, math.nan, math.inf, -math.inf, 352.0, 353.0, 1e9]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
_INTS16 = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, -1, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 2304, 32767, -32768]), st.integers(-32768, 32767))
_INTS32 = st.one_of(st.sampled_from([348, 540, 0, -1, 1 << 24]), st.integers(-(2**31), 2**31 - 1))


def _seed(dtype: str, shape: tuple[int, ...], private: bool) -> bytes:
    rng = np.random.default_rng(len(shape) + len(dtype))
    data = (rng.standard_normal(shape) * 100).astype(dtype)
    image = nib.Nifti1Image(data, np.diag([0.9, 0.9, 2.5, 1.0]))
    if private:
        image.header["descrip"] = SECRETS[0]
        image.header["aux_file"] = SECRETS[0][:20]
        image.header.extensions.append(nib.nifti1.Nifti1Extension(6, SECRETS[1] * 4))
    return bytes(image.to_bytes())


SEEDS = [
    _seed("int16", (6, 5, 4), True),
    _seed("float32", (7, 3, 2), True),
    _seed("uint8", (4, 4, 4, 1), False),
    _seed("float64", (3, 3, 3), True),
]


@st.composite
def hostile_uploads(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(sorted(FIELDS)))
        offset, fmt = FIELDS[name]
        value = draw(_FLOATS if fmt.endswith("f") else _INTS32 if fmt.endswith("i") else _INTS16)
        raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(raw) - 1))
        raw[position] = draw(st.integers(0, 255))
    data = bytes(raw)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        data += draw(st.binary(max_size=64))
    if draw(st.booleans()):
        data = gzip.compress(data, compresslevel=1)
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
    return data


def _inflate(data: bytes) -> bytes:
    """Best-effort decompression of a (possibly cut) gzip input; plain input as it is."""
    if data[:2] != b"\x1f\x8b":
        return data
    import zlib

    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return inflater.decompress(data)
    except zlib.error:
        return b""


def check_one(data: bytes, workdir: Path) -> VolumeInfo | UploadRejected:
    """The property for one input (see the module docstring); returns what the validator said."""
    src, dst = workdir / "upload", workdir / "input.nii"
    src.write_bytes(data)
    dst.unlink(missing_ok=True)
    try:
        info = normalize_upload(src, dst, LIMITS)
    except UploadRejected as exc:
        assert exc.status in (413, 415, 422)
        assert not dst.exists()
        return exc
    out = dst.read_bytes()
    itemsize = np.dtype(info.dtype).itemsize
    voxels = math.prod(info.shape)
    assert voxels <= LIMITS.max_voxels and len(out) <= LIMITS.max_decompressed_bytes
    assert len(out) == 352 + voxels * itemsize, (len(out), info)
    assert SECRETS[0] not in out  # header text never survives
    # Extension bytes appear only if the (mutated) header itself declared them voxel data:
    # no extension flag, and vox_offset pointing at them.
    if SECRETS[1] in out:
        plain = _inflate(data)
        assert len(plain) > 348 and plain[348] == 0, "flagged extension bytes were copied as voxels"
    header = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(out[:348]), check=False)
    assert tuple(int(d) for d in header.get_data_shape())[:3] == info.shape
    assert all(math.isfinite(z) and z > 0 for z in info.spacing)
    return info


def run(examples: int, workdir: Path | None = None) -> None:
    """Run the property on ``examples`` generated inputs (derandomised: the same inputs every run)."""
    directory = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fuzz-nifti-"))

    @given(hostile_uploads())
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def property_holds(data: bytes) -> None:
        check_one(data, directory)

    property_holds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args()
    run(args.examples)


if __name__ == "__main__":
    main()
