"""Durable job records and the job service that ties records, the queue and storage together.

A record is a flat mapping (see :mod:`worker.contracts`) that the API creates before it
enqueues and that the job function updates as it runs; it outlives RQ's result TTL
(``record_ttl_s``). :class:`RedisJobStore` keeps it as a Redis hash; :class:`MemoryJobStore`
keeps it in this process for embedded mode.

Reads reconcile: a record still ``queued``/``started`` whose queue job has failed (a worker that
died, a timeout outside the job function) or vanished is marked ``failed`` with the reason, so
no job stays ``started`` forever.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from service.nifti import VolumeInfo
from service.queues import JobQueue
from service.storage import Storage
from worker.contracts import JobState, SegmentationRequest, decode_fields, encode_fields, record_key, utc_now

__all__ = ["DeleteOutcome", "JobService", "JobStore", "MemoryJobStore", "RedisJobStore"]


class JobStore(Protocol):
    def create(self, job_id: str, fields: Mapping[str, Any]) -> None: ...

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]: ...

    def update(self, job_id: str, fields: Mapping[str, Any]) -> bool: ...

    def delete(self, job_id: str) -> None: ...


class MemoryJobStore:
    """Embedded mode: records in this process (lost on restart, like the in-process queue)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}

    def create(self, job_id: str, fields: Mapping[str, Any]) -> None:
        with self._lock:
            self._records[job_id] = copy.deepcopy(dict(fields))

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        with self._lock:
            return [copy.deepcopy(self._records[i]) if i in self._records else None for i in job_ids]

    def update(self, job_id: str, fields: Mapping[str, Any]) -> bool:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                return False
            record.update(copy.deepcopy(dict(fields)))
            return True

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._records.pop(job_id, None)


class RedisJobStore:
    """RQ mode: one Redis hash per job at :func:`worker.contracts.record_key`, one JSON value per field."""

    def __init__(self, connection: Any, queue_name: str, ttl_s: int) -> None:
        self._redis = connection
        self._queue_name = queue_name
        self._ttl_s = ttl_s

    def _key(self, job_id: str) -> str:
        return record_key(self._queue_name, job_id)

    def create(self, job_id: str, fields: Mapping[str, Any]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._key(job_id))
        pipe.hset(self._key(job_id), mapping=encode_fields(fields))
        pipe.expire(self._key(job_id), self._ttl_s)
        pipe.execute()

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self._key(job_id))
        return [decode_fields(raw) if raw else None for raw in pipe.execute()]

    def update(self, job_id: str, fields: Mapping[str, Any]) -> bool:
        key = self._key(job_id)
        if not self._redis.exists(key):
            return False
        self._redis.hset(key, mapping=encode_fields(fields))
        return True

    def delete(self, job_id: str) -> None:
        self._redis.delete(self._key(job_id))


class DeleteOutcome(StrEnum):
    CANCELED = "canceled"  # was queued: removed from the queue, the upload deleted, record kept
    DELETED = "deleted"  # was terminal: data and record deleted
    RUNNING = "running"  # started: cannot be cancelled
    MISSING = "missing"


@dataclass(frozen=True)
class JobService:
    store: JobStore
    queue: JobQueue
    storage: Storage

    def submit(self, request: SegmentationRequest, volume: VolumeInfo) -> dict[str, Any]:
        """Create the durable record, then enqueue. The upload is already stored and checked."""
        record: dict[str, Any] = {
            "job_id": request.job_id,
            "status": JobState.QUEUED.value,
            "progress": 0,
            "targets": list(request.targets),
            "ensemble": request.ensemble,
            "steps": request.steps,
            "seed": request.seed,
            "input_shape": list(volume.shape),
            "input_spacing": list(volume.spacing),
            "created_at": utc_now(),
            "started_at": None,
            "finished_at": None,
            "error": None,
            "results": [],
        }
        self.store.create(request.job_id, record)
        try:
            self.queue.enqueue(request)
        except BaseException:
            self.store.delete(request.job_id)
            raise
        return record

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Records with live queue positions; reconciled with the queue where still running."""
        records = self.store.get_many(job_ids)
        pending = [r for r in records if r is not None and not JobState(r["status"]).is_terminal]
        if not pending:
            return records
        failures = self.queue.lost_or_failed(pending)
        for record in records:
            if record is None:
                continue
            reason = failures.get(record["job_id"])
            if reason is not None:
                fields = {"status": JobState.FAILED.value, "error": reason, "finished_at": utc_now()}
                self.store.update(record["job_id"], fields)
                record.update(fields)
        queued = [r["job_id"] for r in records if r is not None and r["status"] == JobState.QUEUED.value]
        positions = self.queue.positions(queued) if queued else {}
        for record in records:
            if record is not None:
                record["position"] = positions.get(record["job_id"])
        return records

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.get_many([job_id])[0]

    def delete(self, job_id: str) -> DeleteOutcome:
        record = self.get(job_id)
        if record is None:
            return DeleteOutcome.MISSING
        state = JobState(record["status"])
        if state is JobState.QUEUED:
            if self.queue.cancel(job_id):
                self.store.update(job_id, {"status": JobState.CANCELED.value, "finished_at": utc_now()})
                self.storage.delete_job(job_id)
                return DeleteOutcome.CANCELED
            state = JobState(self.get(job_id)["status"])  # type: ignore[index]  # a worker took it meanwhile
        if not state.is_terminal:
            return DeleteOutcome.RUNNING
        self.storage.delete_job(job_id)
        self.store.delete(job_id)
        self.queue.forget(job_id)
        return DeleteOutcome.DELETED
