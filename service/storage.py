"""The storage directory shared with workers: uploads and results under server-generated names.

A client's filename never reaches the filesystem: an upload is stored as
``jobs/<job_id>/input.nii`` or ``input.nii.gz`` (chosen from the gzip magic bytes), and result
names are only ever served when they are listed in the job's ``results/`` directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from worker.contracts import job_dir, results_dir

__all__ = ["ResultFile", "Storage", "UploadTooLarge"]

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


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

    async def save_upload(self, job_id: str, chunks: AsyncIterator[bytes], max_bytes: int) -> Path:
        """Stream ``chunks`` into the job's directory, counting bytes; over ``max_bytes`` -> :class:`UploadTooLarge`.

        Returns the stored path (``input.nii`` or ``input.nii.gz``). On any error the job's
        directory is removed.
        """
        directory = self.job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=False)
        partial = directory / ".upload.part"
        total = 0
        head = b""
        try:
            with partial.open("wb") as fh:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    total += len(chunk)
                    if total > max_bytes:
                        raise UploadTooLarge(max_bytes)
                    if len(head) < 2:
                        head += chunk[: 2 - len(head)]
                    fh.write(chunk)
            name = "input.nii.gz" if head.startswith(GZIP_MAGIC) else "input.nii"
            final = directory / name
            os.replace(partial, final)
        except BaseException:
            self.delete_job(job_id)
            raise
        return final

    def input_path(self, job_id: str) -> Path | None:
        directory = self.job_dir(job_id)
        for name in ("input.nii.gz", "input.nii"):
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

