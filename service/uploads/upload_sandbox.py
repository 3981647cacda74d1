"""Run the upload validator in a short-lived subprocess, so a native crash cannot take the API down.

The API calls :func:`check_upload`; it starts ``python -m service.uploads.upload_sandbox SRC DST LIMITS``
which lowers its own resource limits (address space, CPU seconds, largest file it may write),
runs :func:`service.uploads.nifti.normalize_upload` (``kind="nifti"``) or
:func:`service.uploads.dicom_upload.normalize_dicom_upload` (``kind="dicom_zip"``), and prints one JSON
line. A child that crashes (segfault, out of memory), overruns the wall-clock limit (killed) or
prints nonsense becomes an :class:`UploadUnchecked` (HTTP 422: the upload could not be checked);
a child that finds the storage volume full answers so, which becomes
:class:`service.queueing.storage.StorageFull` (HTTP 507). The API process itself only waits on a pipe.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from service.uploads.nifti import MalformedNifti, NotNifti, UploadLimits, UploadRejected, UploadTooBig, VolumeInfo
from service.queueing.storage import StorageFull, is_storage_full

__all__ = ["SandboxLimits", "UploadUnchecked", "check_upload", "main"]

_KINDS: dict[str, type[UploadRejected]] = {"not_nifti": NotNifti, "malformed": MalformedNifti, "too_big": UploadTooBig}
MODULE = "service.uploads.upload_sandbox"
KINDS = ("nifti", "dicom_zip")


class UploadUnchecked(MalformedNifti):
    """The validator process died or overran its time: refused (422), the API carries on."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float
    memory_bytes: int
    cpu_s: int


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


async def check_upload(
    src: Path, dst: Path, limits: UploadLimits, sandbox: SandboxLimits, *, module: str = MODULE, kind: str = "nifti"
) -> VolumeInfo:
    """Validate ``src`` and write its canonical copy to ``dst`` in a child process (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    payload = json.dumps(
        {"limits": asdict(limits), "memory_bytes": sandbox.memory_bytes, "cpu_s": sandbox.cpu_s, "kind": kind}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATENTSEG_", "REDIS"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-E", "-s", "-m", module, str(src), str(dst), payload,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env=env, cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=sandbox.timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        Path(dst).unlink(missing_ok=True)
        raise UploadUnchecked(f"the upload could not be checked within {sandbox.timeout_s:g} s") from None
    if proc.returncode != 0:
        Path(dst).unlink(missing_ok=True)
        how = _signal_name(proc.returncode) if proc.returncode < 0 else f"exit status {proc.returncode}"
        raise UploadUnchecked(f"the upload could not be checked: the validator process failed ({how})")
    try:
        answer = json.loads(stdout.decode().strip().splitlines()[-1])
        if answer["ok"]:
            v = answer["volume"]
            return VolumeInfo(
                shape=tuple(v["shape"]), spacing=tuple(v["spacing"]), dtype=v["dtype"],
                nonfinite_voxels=int(v["nonfinite_voxels"]),
            )
        if answer["kind"] == "storage_full":
            Path(dst).unlink(missing_ok=True)
            raise StorageFull(answer["message"])
        error = _KINDS[answer["kind"]](answer["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        Path(dst).unlink(missing_ok=True)
        raise UploadUnchecked("the upload could not be checked: the validator gave no answer") from None
    raise error


def _limit_self(memory_bytes: int, cpu_s: int, file_bytes: int) -> None:
    import resource

    for what, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_CORE, 0),
    ):
        _, hard = resource.getrlimit(what)
        resource.setrlimit(what, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))


def main(argv: list[str]) -> int:
    """Child entry point: ``SRC DST PAYLOAD_JSON`` -> one JSON line on stdout."""
    src, dst, raw = argv
    config = json.loads(raw)
    limits = UploadLimits(**config["limits"])
    kind = config.get("kind", "nifti")
    # The canonical copy is at most the decompressed cap (plus zip headers); a bug cannot write more.
    overhead = 1024 * 1024 + (256 * limits.max_dicom_files if kind == "dicom_zip" else 0)
    _limit_self(int(config["memory_bytes"]), int(config["cpu_s"]), limits.max_decompressed_bytes + overhead)
    if kind == "dicom_zip":
        from service.uploads.dicom_upload import normalize_dicom_upload as normalize
    else:
        from service.uploads.nifti import normalize_upload as normalize

    try:
        info = normalize(Path(src), Path(dst), limits)
    except UploadRejected as exc:
        kind = {NotNifti: "not_nifti", UploadTooBig: "too_big"}.get(type(exc), "malformed")
        answer = {"ok": False, "kind": kind, "message": str(exc)}
    except OSError as exc:
        if not is_storage_full(exc):
            raise
        Path(dst).unlink(missing_ok=True)
        answer = {"ok": False, "kind": "storage_full", "message": f"storage full while writing the checked copy ({exc.strerror})"}
    else:
        answer = {"ok": True, "volume": asdict(info)}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
