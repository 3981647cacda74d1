"""The storage directory shared with workers: uploads and results under server-generated names.

A client's filename never reaches the filesystem: the raw upload streams into
``jobs/<job_id>/.upload.raw`` (counted and hashed on the way), the validator writes the
canonical ``input.nii`` (or, for a DICOM series zip, ``input.zip``) from it and the raw bytes
are deleted. ``job.json`` (the manifest) lets
the API rebuild a job Redis lost. Result names are only ever served when they are listed in the
job's ``results/`` directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from model.errors import ServerFault, UserError
from worker.contracts import (
    DICOM_INPUT_NAME,
    JOBS_DIRNAME,
    MANIFEST_NAME,
    RESULTS_TMP_PREFIX,
    is_job_id,
    job_dir,
    results_dir,
    write_json_atomically,
)

__all__ = ["STORAGE_ERRNOS", "RawUpload", "ResultFile", "Storage", "StorageFull", "UploadTooLarge", "is_storage_full"]

log = logging.getLogger(__name__)


# A full volume or an exhausted quota: the API answers 507 (service.api_surface), never 4xx.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageFull(ServerFault):
    """The storage volume has no room (or the quota is spent): HTTP 507 with Retry-After."""

    status = 507


def is_storage_full(exc: BaseException) -> bool:
    return isinstance(exc, StorageFull) or (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS)


class UploadTooLarge(UserError):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class RawUpload:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class ResultFile:
    name: str
    size: int
    path: Path


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        return job_dir(self.root, job_id)

    async def save_upload(self, job_id: str, chunks: AsyncIterator[bytes], max_bytes: int) -> RawUpload:
        """Stream ``chunks`` into the job's directory, counting and hashing; over ``max_bytes`` -> :class:`UploadTooLarge`.

        On any error the job's directory is removed.
        """
        directory = self.job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=False)
        raw = directory / ".upload.raw"
        total = 0
        digest = hashlib.sha256()
        try:
            with raw.open("wb") as fh:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    total += len(chunk)
                    if total > max_bytes:
                        raise UploadTooLarge(max_bytes)
                    digest.update(chunk)
                    fh.write(chunk)
        except BaseException:
            self.delete_job(job_id)
            raise
        return RawUpload(path=raw, size=total, sha256=digest.hexdigest())

    def canonical_input(self, job_id: str, dicom: bool = False) -> Path:
        """Where the validator writes the checked, privacy-clean copy of the upload."""
        return self.job_dir(job_id) / (DICOM_INPUT_NAME if dicom else "input.nii")

    def write_manifest(self, job_id: str, manifest: dict[str, object]) -> None:
        write_json_atomically(self.job_dir(job_id) / MANIFEST_NAME, manifest)

    def read_manifest(self, job_id: str) -> dict[str, object] | None:
        try:
            value = json.loads((self.job_dir(job_id) / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def job_ids(self) -> list[str]:
        root = self.root / JOBS_DIRNAME
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and is_job_id(p.name))

    def age_s(self, job_id: str, now: float | None = None) -> float:
        try:
            return (time.time() if now is None else now) - self.job_dir(job_id).stat().st_mtime
        except OSError:
            return 0.0

    def remove_temp_results(self, job_id: str) -> None:
        """A dead worker's private temp result directories (never visible as results)."""
        directory = self.job_dir(job_id)
        if directory.is_dir():
            for path in directory.glob(f"{RESULTS_TMP_PREFIX}*"):
                shutil.rmtree(path, ignore_errors=True)

    def input_path(self, job_id: str) -> Path | None:
        directory = self.job_dir(job_id)
        for name in ("input.nii", "input.nii.gz", DICOM_INPUT_NAME):
            if (directory / name).is_file():
                return directory / name
        return None

    def delete_input(self, job_id: str) -> None:
        path = self.input_path(job_id)
        if path is not None:
            path.unlink(missing_ok=True)

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def results(self, job_id: str) -> list[ResultFile]:
        """The files of a finished job; empty until the worker's atomic rename made them appear."""
        directory = results_dir(self.root, job_id)
        if not directory.is_dir():
            return []
        files = [p for p in sorted(directory.iterdir()) if p.is_file() and not p.is_symlink()]
        return [ResultFile(name=p.name, size=p.stat().st_size, path=p) for p in files]

    def result(self, job_id: str, name: str) -> ResultFile | None:
        """One listed result file by exact name; anything not listed (``..``, ``/``) is None."""
        for item in self.results(job_id):
            if item.name == name:
                return item
        return None

