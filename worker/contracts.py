"""What the API and the workers agree on: payloads, job states, record fields, storage layout.

Torch-free and Redis-free (stdlib only), so the API process imports it freely.

Storage layout (a directory shared by the API and every worker)::

    <storage_root>/jobs/<job_id>/input.nii[.gz]     the upload, under a server-generated name
    <storage_root>/jobs/<job_id>/input.zip          ... or a DICOM series (slices only, generated member names)
    <storage_root>/jobs/<job_id>/results/           appears atomically (rename) when a job finishes
    <storage_root>/jobs/<job_id>/.results-<token>/  a worker's private temp dir before the rename

Job records (our durable view of a job, independent of RQ's result TTL) are flat mappings of
field name -> JSON-encodable value. In Redis they are a hash at :func:`record_key`, one JSON
string per field, so the API and a worker can update different fields without a
read-modify-write race. Embedded mode keeps the same mappings in memory.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from model.errors import ServerFault

__all__ = [
    "DICOM_INPUT_NAME",
    "JOBS_DIRNAME",
    "MANIFEST_NAME",
    "TRANSITION_LUA",
    "JobCanceled",
    "JobInterrupted",
    "JobTimedOut",
    "RESULTS_DIRNAME",
    "TASK_PATH",
    "alive_key",
    "JobReporter",
    "JobState",
    "PayloadError",
    "SegmentationRequest",
    "bundle_info_key",
    "worker_alive_key",
    "decode_fields",
    "default_storage_dir",
    "encode_fields",
    "is_job_id",
    "job_dir",
    "new_job_id",
    "record_key",
    "results_dir",
    "utc_now",
]

# RQ resolves the job function by this dotted path; the API never imports it.
TASK_PATH = "worker.tasks.run_segmentation"
JOBS_DIRNAME = "jobs"
RESULTS_DIRNAME = "results"
# A DICOM series upload, stored as a zip of its image slices (see service.uploads.dicom_upload).
DICOM_INPUT_NAME = "input.zip"
RESULTS_TMP_PREFIX = ".results-"
# The job's request as the API accepted it (payload, owner, record): lets the API rebuild a
# record and re-enqueue the job if Redis lost them.
MANIFEST_NAME = "job.json"

# Compare-and-set on a record hash: KEYS[1] = record key, ARGV[1] = the JSON-encoded status it
# must have, ARGV[2:] = field, value pairs (JSON-encoded). Returns 1 when applied, else 0. Used
# by the worker to claim a queued job and by the API to cancel one, so exactly one side wins.
TRANSITION_LUA = """
local current = redis.call('HGET', KEYS[1], 'status')
if current ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_INPUT_NAMES = frozenset({"input.nii", "input.nii.gz", DICOM_INPUT_NAME})


class JobInterrupted(BaseException):
    """Raised asynchronously inside a running job (see :mod:`worker.reporting`); a BaseException so
    that no ``except Exception`` in the pipeline swallows it."""

    state = "failed"
    reason = "interrupted"


class JobCanceled(JobInterrupted):
    state = "canceled"
    reason = "canceled by the client while running"


class JobTimedOut(JobInterrupted):
    state = "failed"
    reason = "timed out: the job ran longer than the server's job timeout"


class PayloadError(ServerFault, ValueError):
    """A job payload is malformed (never caused by a user: the API built it)."""


class JobState(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.CANCELED)


def new_job_id() -> str:
    """128 random bits as 32 hex characters: unguessable, and safe in paths and Redis keys."""
    return secrets.token_hex(16)


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.fullmatch(text))


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def default_storage_dir() -> Path:
    """``$XDG_DATA_HOME/latentseg`` (``~/.local/share/latentseg``): the same for API and worker on one host."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "latentseg"


def write_json_atomically(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON through a private temp file: a reader sees the old
    file or the new one, never half of either, and two writers (the API and a worker both update a
    job's ``job.json``) never rename each other's temp file. Raises OSError; leaves no temp file."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        partial.write_text(json.dumps(value))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def job_dir(storage_root: Path, job_id: str) -> Path:
    if not is_job_id(job_id):
        raise PayloadError(f"not a job id: {job_id!r}")
    return Path(storage_root) / JOBS_DIRNAME / job_id


def results_dir(storage_root: Path, job_id: str) -> Path:
    return job_dir(storage_root, job_id) / RESULTS_DIRNAME


def record_key(queue_name: str, job_id: str) -> str:
    """Redis key of a job's durable record. Namespaced by queue so one Redis can host many deployments."""
    return f"latentseg:{queue_name}:job:{job_id}"


def alive_key(queue_name: str, job_id: str) -> str:
    """Redis key a worker refreshes (with a short TTL) while it runs the job: gone = the worker died."""
    return f"latentseg:{queue_name}:alive:{job_id}"


def worker_alive_key(queue_name: str, worker_name: str) -> str:
    """Redis key a worker process refreshes (short TTL) while it lives, busy or idle: readiness
    counts only workers whose key exists (RQ's own registry keeps a killed busy worker for the
    whole job timeout)."""
    return f"latentseg:{queue_name}:worker-alive:{worker_name}"


def bundle_info_key(queue_name: str) -> str:
    """Redis hash where each worker on ``queue_name`` publishes the bundle it serves: field = the
    worker's name, value = JSON ``{name, version, device}``; removed when the worker exits."""
    return f"latentseg:{queue_name}:bundles"


def encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in fields.items()}


def decode_fields(raw: Mapping[str | bytes, str | bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = name.decode() if isinstance(name, bytes) else name
        out[key] = json.loads(value)
    return out


@dataclass(frozen=True)
class SegmentationRequest:
    """The job payload, carried through Redis as JSON (RQ's JSONSerializer).

    ``input_name`` is relative to the job's directory; every worker resolves it under its own
    storage root, so API and workers may mount the shared storage at different paths.
    ``dicom_seg`` asks for ``segmentation.dcm`` (BINARY, or FRACTIONAL with ``fractional``); for
    a NIfTI input the derived CT series it references comes as ``dicom_ct.zip``. Payloads
    written before these fields existed read as False.

    ``source`` (a DICOMweb reference instead of an upload): ``{"study_uid", "series_uid",
    "max_bytes", "max_files", "max_voxels"}``; the worker retrieves the series into
    ``input.zip`` with WADO-RS under those caps (the API's upload limits) before segmenting
    (:mod:`worker.dicomweb`). The URL and credentials are the worker's own settings, never in
    the payload. ``push`` stores ``segmentation.dcm`` with STOW-RS after the job finished.
    """

    job_id: str
    input_name: str
    targets: tuple[str, ...]
    ensemble: int | None  # None: the bundle's default (its sampling section), picked by the worker
    steps: int | None  # None: as ensemble
    seed: int
    dicom_seg: bool = False
    fractional: bool = False
    largest_component: bool | None = None  # None: the bundle's default
    exclusive: bool | None = None  # None: the bundle's default
    source: Mapping[str, Any] | None = None
    push: bool = False

    def __post_init__(self) -> None:
        if not is_job_id(self.job_id):
            raise PayloadError(f"not a job id: {self.job_id!r}")
        if self.input_name not in _INPUT_NAMES or PurePosixPath(self.input_name).name != self.input_name:
            raise PayloadError(f"input_name must be one of {sorted(_INPUT_NAMES)}, got {self.input_name!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise PayloadError(f"targets must be non-empty names, got {self.targets!r}")
        for name in ("ensemble", "steps", "seed"):
            value = getattr(self, name)
            if value is None and name != "seed":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "seed" else 1):
                kind = "a non-negative int" if name == "seed" else "a positive int or null"
                raise PayloadError(f"{name} must be {kind}, got {value!r}")
        for name in ("dicom_seg", "fractional"):
            if not isinstance(getattr(self, name), bool):
                raise PayloadError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.fractional and not self.dicom_seg:
            raise PayloadError("fractional needs dicom_seg")
        if self.largest_component is not None and not isinstance(self.largest_component, bool):
            raise PayloadError(f"largest_component must be a bool or null, got {self.largest_component!r}")
        if self.exclusive is not None and not isinstance(self.exclusive, bool):
            raise PayloadError(f"exclusive must be a bool or null, got {self.exclusive!r}")
        if self.source is not None:
            if self.input_name != DICOM_INPUT_NAME:
                raise PayloadError(f"a DICOMweb source is retrieved into {DICOM_INPUT_NAME}, not {self.input_name!r}")
            for key in ("study_uid", "series_uid"):
                if not isinstance(self.source.get(key), str) or not self.source.get(key):
                    raise PayloadError(f"source.{key} must be a UID string, got {self.source.get(key)!r}")
            for key in ("max_bytes", "max_files", "max_voxels"):
                value = self.source.get(key)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise PayloadError(f"source.{key} must be a positive int, got {value!r}")
        if not isinstance(self.push, bool):
            raise PayloadError(f"push must be a bool, got {self.push!r}")
        if self.push and not self.dicom_seg:
            raise PayloadError("push needs dicom_seg (the DICOM-SEG is what is pushed)")

    @property
    def is_dicom(self) -> bool:
        return self.input_name == DICOM_INPUT_NAME

    def to_payload(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "input_name": self.input_name,
            "targets": list(self.targets),
            "ensemble": self.ensemble,
            "steps": self.steps,
            "seed": self.seed,
            "dicom_seg": self.dicom_seg,
            "fractional": self.fractional,
            "largest_component": self.largest_component,
            "exclusive": self.exclusive,
            "source": dict(self.source) if self.source is not None else None,
            "push": self.push,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SegmentationRequest:
        try:
            return cls(
                job_id=payload["job_id"],
                input_name=payload["input_name"],
                targets=tuple(payload["targets"]),
                ensemble=payload["ensemble"],
                steps=payload["steps"],
                seed=payload["seed"],
                dicom_seg=payload.get("dicom_seg", False),
                fractional=payload.get("fractional", False),
                largest_component=payload.get("largest_component"),
                exclusive=payload.get("exclusive"),
                source=payload.get("source"),
                push=payload.get("push", False),
            )
        except (KeyError, TypeError) as exc:
            raise PayloadError(f"malformed segmentation payload: {exc!r}") from exc

    def input_path(self, storage_root: Path) -> Path:
        return job_dir(storage_root, self.job_id) / self.input_name


class JobReporter(Protocol):
    """Where the job function reports its life: RQ mode writes Redis, embedded mode memory."""

    def started(self) -> bool:
        """Claim the job (queued -> started); False when it was canceled or taken meanwhile."""
        ...

    def interruptible(self) -> Any:
        """A context manager: inside it the job may be interrupted (cancel request, deadline)."""
        ...

    def canceled(self, reason: str) -> None: ...

    def progress(self, fraction: float) -> None: ...

    @property
    def percent(self) -> int:
        """The last progress written (0-100; -1 before the job started)."""
        ...

    def finished(self, results: list[str], bundle: Mapping[str, str] | None = None) -> None:
        """The job's result file names, and the bundle (name, version) that produced them."""
        ...

    def failed(self, reason: str) -> None: ...

    def annotate(self, fields: Mapping[str, Any]) -> None:
        """Extra record fields after the job ended (the DICOMweb push status)."""
        ...
