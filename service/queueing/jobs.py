"""Durable job records and the job service that ties records, the queue and storage together.

A record is a flat mapping (see :mod:`worker.contracts`) that the API creates before it
enqueues and that the job function updates as it runs; it outlives RQ's result TTL
(``record_ttl_s``). :class:`RedisJobStore` keeps it as a Redis hash; :class:`MemoryJobStore`
keeps it in this process for embedded mode.

Every record has an ``owner`` (the API key's name): the service answers only its owner.

Reads reconcile, so nothing stays ``queued``/``started`` forever and nothing accepted is lost:

- ``queued``/``started`` whose manifest records an ending (Redis rolled back: an append-only
  file that lost its last second) -> the manifest's ending;
- ``started`` whose worker stopped beating (killed, OOM) -> ``failed`` with the reason, and the
  worker's temp result directory is removed;
- ``queued`` whose queue job vanished (Redis lost it) -> enqueued again from the job's
  manifest on storage;
- no record at all, but a manifest on storage (Redis lost the record) -> the record is rebuilt
  from the manifest: as it ended if the manifest records an ending (finished, failed with its
  reason, canceled), else ``finished`` if results exist, else ``queued`` and enqueued again.

The manifest (``job.json``) records every ending: the worker writes it when the job ends
(:func:`worker.tasks.record_terminal_state`), the API when it cancels a queued job or fails a
job whose worker died, and reconciliation copies any ending it finds only in Redis. Each write
is atomic (a private temp file, then ``os.replace``).

:meth:`JobService.reconcile_storage` applies the same to every stored job (at start-up and
periodically).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from model.errors import UserError
from service.uploads.nifti import VolumeInfo
from service.queueing.queues import JobQueue
from service.queueing.storage import Storage
from worker.contracts import (
    MANIFEST_NAME,
    TRANSITION_LUA,
    JobState,
    SegmentationRequest,
    decode_fields,
    encode_fields,
    record_key,
    utc_now,
    write_json_atomically,
)
from worker.memory import MiB, budget_message

__all__ = [
    "AdmissionRefused",
    "DeleteOutcome",
    "JobService",
    "JobStore",
    "MemoryJobStore",
    "RedisJobStore",
    "SubmitOutcome",
    "TooLargeForWorkers",
]

log = logging.getLogger(__name__)
ORPHAN_UPLOAD_AGE_S = 3600.0
# The record fields that describe how a job ended; the manifest keeps them (see module docstring).
TERMINAL_FIELDS = ("status", "progress", "started_at", "finished_at", "error", "results", "bundle")


class JobStore(Protocol):
    def create(self, job_id: str, fields: Mapping[str, Any]) -> None: ...

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]: ...

    def update(self, job_id: str, fields: Mapping[str, Any]) -> bool: ...

    def transition(self, job_id: str, expected: JobState, fields: Mapping[str, Any]) -> bool:
        """Apply ``fields`` only if the record's status is ``expected`` (atomic)."""
        ...

    def delete(self, job_id: str) -> None: ...

    def claim_digest(self, digest: str, job_id: str, ttl_s: int) -> str | None:
        """Register ``job_id`` for ``digest``; returns the job id already registered, if any."""
        ...

    def lookup_digest(self, digest: str) -> str | None: ...

    def replace_digest(self, digest: str, old_job_id: str, job_id: str, ttl_s: int) -> bool: ...

    def release_digest(self, digest: str, job_id: str) -> None: ...

    def active_add(self, owner: str, job_id: str) -> int:
        """Add to the owner's active set; returns its size afterwards."""
        ...

    def active_remove(self, owner: str, job_ids: Sequence[str]) -> None: ...

    def active_members(self, owner: str) -> list[str]: ...


class MemoryJobStore:
    """Embedded mode: records in this process (rebuilt from storage manifests on restart)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._digests: dict[str, str] = {}
        self._active: dict[str, set[str]] = {}

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

    def transition(self, job_id: str, expected: JobState, fields: Mapping[str, Any]) -> bool:
        with self._lock:
            record = self._records.get(job_id)
            if record is None or record.get("status") != expected.value:
                return False
            record.update(copy.deepcopy(dict(fields)))
            return True

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._records.pop(job_id, None)

    def claim_digest(self, digest: str, job_id: str, ttl_s: int) -> str | None:
        with self._lock:
            existing = self._digests.setdefault(digest, job_id)
            return None if existing == job_id else existing

    def lookup_digest(self, digest: str) -> str | None:
        with self._lock:
            return self._digests.get(digest)

    def replace_digest(self, digest: str, old_job_id: str, job_id: str, ttl_s: int) -> bool:
        with self._lock:
            if self._digests.get(digest) != old_job_id:
                return False
            self._digests[digest] = job_id
            return True

    def release_digest(self, digest: str, job_id: str) -> None:
        with self._lock:
            if self._digests.get(digest) == job_id:
                del self._digests[digest]

    def active_add(self, owner: str, job_id: str) -> int:
        with self._lock:
            members = self._active.setdefault(owner, set())
            members.add(job_id)
            return len(members)

    def active_remove(self, owner: str, job_ids: Sequence[str]) -> None:
        with self._lock:
            self._active.get(owner, set()).difference_update(job_ids)

    def active_members(self, owner: str) -> list[str]:
        with self._lock:
            return sorted(self._active.get(owner, set()))


class RedisJobStore:
    """RQ mode: one Redis hash per job at :func:`worker.contracts.record_key`, one JSON value per field."""

    def __init__(self, connection: Any, queue_name: str, ttl_s: int) -> None:
        self._redis = connection
        self._queue_name = queue_name
        self._ttl_s = ttl_s
        self._transition = connection.register_script(TRANSITION_LUA)

    def _key(self, job_id: str) -> str:
        return record_key(self._queue_name, job_id)

    def _digest_key(self, digest: str) -> str:
        return f"latentseg:{self._queue_name}:digest:{digest}"

    def _active_key(self, owner: str) -> str:
        return f"latentseg:{self._queue_name}:active:{owner}"

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

    def transition(self, job_id: str, expected: JobState, fields: Mapping[str, Any]) -> bool:
        args: list[str] = [encode_fields({"status": expected.value})["status"]]
        for name, value in encode_fields(fields).items():
            args += [name, value]
        return bool(self._transition(keys=[self._key(job_id)], args=args))

    def delete(self, job_id: str) -> None:
        self._redis.delete(self._key(job_id))

    def claim_digest(self, digest: str, job_id: str, ttl_s: int) -> str | None:
        key = self._digest_key(digest)
        if self._redis.set(key, job_id, nx=True, ex=ttl_s):
            return None
        existing = self._redis.get(key)
        if existing is None:  # expired in between: try once more
            return None if self._redis.set(key, job_id, nx=True, ex=ttl_s) else job_id
        return str(existing.decode())

    def lookup_digest(self, digest: str) -> str | None:
        value = self._redis.get(self._digest_key(digest))
        return None if value is None else str(value.decode())

    def replace_digest(self, digest: str, old_job_id: str, job_id: str, ttl_s: int) -> bool:
        key = self._digest_key(digest)
        with self._redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                current = pipe.get(key)
                if current is not None and current.decode() != old_job_id:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(key, job_id, ex=ttl_s)
                pipe.execute()
                return True
            except Exception as exc:
                if type(exc).__name__ == "WatchError":
                    return False
                raise

    def release_digest(self, digest: str, job_id: str) -> None:
        key = self._digest_key(digest)
        current = self._redis.get(key)
        if current is not None and current.decode() == job_id:
            self._redis.delete(key)

    def active_add(self, owner: str, job_id: str) -> int:
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(self._active_key(owner), job_id)
        pipe.expire(self._active_key(owner), self._ttl_s)
        pipe.scard(self._active_key(owner))
        return int(pipe.execute()[-1])

    def active_remove(self, owner: str, job_ids: Sequence[str]) -> None:
        if job_ids:
            self._redis.srem(self._active_key(owner), *job_ids)

    def active_members(self, owner: str) -> list[str]:
        return sorted(m.decode() for m in self._redis.smembers(self._active_key(owner)))


def _ended_state(record: Mapping[str, Any]) -> JobState | None:
    try:
        state = JobState(record.get("status"))
    except ValueError:
        return None
    return state if state.is_terminal else None


class DeleteOutcome(StrEnum):
    CANCELED = "canceled"  # was queued: removed from the queue, the upload deleted, record kept
    CANCEL_REQUESTED = "cancel_requested"  # running: the worker stops it at its next heartbeat
    DELETED = "deleted"  # was terminal: data and record deleted
    MISSING = "missing"


class TooLargeForWorkers(UserError):
    """The upload's estimated peak memory exceeds every live worker's budget: HTTP 413."""

    status = 413


class AdmissionRefused(UserError):
    """Too many active jobs for this key, or the queue is full: HTTP 429 with Retry-After."""

    status = 429
    retry_later = True


@dataclass(frozen=True)
class SubmitOutcome:
    record: dict[str, Any]
    duplicate: bool


@dataclass(frozen=True)
class JobService:
    store: JobStore
    queue: JobQueue
    storage: Storage
    max_active_per_owner: int = 16
    max_queued: int = 1000
    dedup_ttl_s: int = 24 * 3600

    # ------------------------------------------------------------ admission and submission

    def check_admission(self, owner: str) -> None:
        """Cheap checks before an upload streams in (the authoritative ones run in :meth:`submit`)."""
        if self.queue.count() >= self.max_queued:
            raise AdmissionRefused(f"the queue is full ({self.max_queued} jobs); retry later")
        if len(self._active_ids(owner)) >= self.max_active_per_owner:
            raise AdmissionRefused(
                f"this API key already has {self.max_active_per_owner} queued or running jobs; retry when one has ended"
            )

    def find_duplicate(self, owner: str, digest: str) -> dict[str, Any] | None:
        """The live (not failed/canceled) job of ``owner`` already registered for ``digest``."""
        job_id = self.store.lookup_digest(digest)
        if job_id is None:
            return None
        record = self.get(job_id)
        if record is None or record.get("owner") != owner:
            return None
        if record["status"] in (JobState.FAILED.value, JobState.CANCELED.value):
            return None
        return record

    def submit(
        self, request: SegmentationRequest, volume: VolumeInfo, owner: str, digest: str
    ) -> SubmitOutcome:
        """Create the durable record and the manifest, then enqueue. The upload is already checked.

        A live job of the same owner with the same ``digest`` (upload bytes and parameters) is
        returned instead (``duplicate``), and this upload is discarded.
        """
        self._check_memory(request, volume)
        record: dict[str, Any] = {
            "job_id": request.job_id,
            "owner": owner,
            "status": JobState.QUEUED.value,
            "progress": 0,
            "targets": list(request.targets),
            "ensemble": request.ensemble,
            "steps": request.steps,
            "seed": request.seed,
            "input_shape": list(volume.shape),
            "input_spacing": list(volume.spacing),
            "nonfinite_voxels": volume.nonfinite_voxels,
            "input_format": "dicom" if request.is_dicom else "nifti",
            "dicom_seg": request.dicom_seg,
            "fractional": request.fractional,
            "bundle": None,
            "created_at": utc_now(),
            "started_at": None,
            "finished_at": None,
            "error": None,
            "results": [],
            "cancel_requested": False,
        }
        previous = self.store.claim_digest(digest, request.job_id, self.dedup_ttl_s)
        if previous is not None:
            live = self.find_duplicate(owner, digest)
            if live is not None:
                self.storage.delete_job(request.job_id)
                return SubmitOutcome(record=live, duplicate=True)
            if not self.store.replace_digest(digest, previous, request.job_id, self.dedup_ttl_s):
                live = self.find_duplicate(owner, digest)
                if live is not None:
                    self.storage.delete_job(request.job_id)
                    return SubmitOutcome(record=live, duplicate=True)
        try:
            self._admit(owner, request.job_id)
            self.store.create(request.job_id, record)
            self.storage.write_manifest(
                request.job_id, {"payload": request.to_payload(), "record": record, "digest": digest}
            )
            self.queue.enqueue(request)
        except BaseException:
            self.store.delete(request.job_id)
            self.store.active_remove(owner, [request.job_id])
            self.store.release_digest(digest, request.job_id)
            self.storage.delete_job(request.job_id)
            raise
        return SubmitOutcome(record=record, duplicate=False)

    def _check_memory(self, request: SegmentationRequest, volume: VolumeInfo) -> None:
        """:class:`TooLargeForWorkers` when no live worker's budget holds the job's estimated peak
        (worker.memory); nothing is refused while no worker has published one, nor a job whose
        volume is not known yet (a DICOMweb reference). For a DICOM series the estimate is the
        NIfTI path's, a lower bound (the DICOM-SEG writing comes on top)."""
        if 0 in volume.shape:
            return
        budgets = self.queue.memory_budgets()
        if not budgets:
            return
        estimates = [
            (model.estimate_bytes(volume.shape, volume.spacing, len(request.targets), request.ensemble), budget)
            for model, budget in budgets
        ]
        if any(estimate <= budget * MiB for estimate, budget in estimates):
            return
        smallest = min(estimate for estimate, _ in estimates)
        raise TooLargeForWorkers(budget_message(smallest, max(b for _, b in budgets), "every worker's"))

    def _admit(self, owner: str, job_id: str) -> None:
        """Add-then-check, so concurrent submissions never exceed the per-key limit."""
        if self.queue.count() >= self.max_queued:
            raise AdmissionRefused(f"the queue is full ({self.max_queued} jobs); retry later")
        if self.store.active_add(owner, job_id) > self.max_active_per_owner:
            self._prune_active(owner)
            if len(self.store.active_members(owner)) > self.max_active_per_owner:
                self.store.active_remove(owner, [job_id])
                raise AdmissionRefused(
                    f"this API key already has {self.max_active_per_owner} queued or running jobs; "
                    "retry when one has ended"
                )

    def _prune_active(self, owner: str) -> None:
        members = self.store.active_members(owner)
        if not members:
            return
        records = self.store.get_many(members)
        ended = [
            job_id
            for job_id, record in zip(members, records, strict=True)
            if record is not None and JobState(record["status"]).is_terminal
        ]
        # A member without a record is either being created right now or lost: keep new ones.
        self.store.active_remove(owner, ended)

    def _active_ids(self, owner: str) -> list[str]:
        self._prune_active(owner)
        members = self.store.active_members(owner)
        records = self.get_many(members) if members else []
        return [r["job_id"] for r in records if r is not None and not JobState(r["status"]).is_terminal]

    # ------------------------------------------------------------ reads with reconciliation

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Records with live queue positions; reconciled with the queue and storage (module docstring)."""
        records = self.store.get_many(job_ids)
        for index, (job_id, record) in enumerate(zip(job_ids, records, strict=True)):
            if record is None:
                records[index] = self._recover(job_id)
        pending = [r for r in records if r is not None and not JobState(r["status"]).is_terminal]
        for record in pending:
            self._apply_stored_ending(record)
        pending = [r for r in pending if not JobState(r["status"]).is_terminal]
        if pending:
            failures = self.queue.lost_or_failed(pending)
            for record in records:
                if record is None or record["job_id"] not in failures:
                    continue
                reason = failures[record["job_id"]]
                if record["status"] == JobState.QUEUED.value and reason.startswith("the queue lost"):
                    if self._requeue(record["job_id"]):
                        continue
                fields = {"status": JobState.FAILED.value, "error": reason, "finished_at": utc_now()}
                # Compare-and-set: the worker may have written its own ending (a failure with its
                # reason, or a result) between our read and this write; its word wins.
                if self.store.transition(record["job_id"], JobState(record["status"]), fields):
                    record.update(fields)
                    self.storage.remove_temp_results(record["job_id"])
                    self.record_ending(record["job_id"], record)
                    continue
                fresh = self.store.get_many([record["job_id"]])[0]
                if fresh is not None:
                    record.clear()
                    record.update(fresh)
        queued = [r["job_id"] for r in records if r is not None and r["status"] == JobState.QUEUED.value]
        positions = self.queue.positions(queued) if queued else {}
        for record in records:
            if record is not None:
                record["position"] = positions.get(record["job_id"])
        return records

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.get_many([job_id])[0]

    def get_owned(self, job_id: str, owner: str) -> dict[str, Any] | None:
        """The record if ``owner`` owns it; None otherwise (callers answer 404 either way)."""
        record = self.get(job_id)
        return record if record is not None and record.get("owner") == owner else None

    def _recover(self, job_id: str) -> dict[str, Any] | None:
        """Rebuild a lost record from the job's manifest on storage (and enqueue it again)."""
        manifest = self.storage.read_manifest(job_id)
        if manifest is None:
            return None
        try:
            record = dict(manifest["record"])
            request = SegmentationRequest.from_payload(manifest["payload"])
        except (KeyError, TypeError, ValueError):
            log.warning("job %s: unreadable manifest; not recovered", job_id)
            return None
        ended = _ended_state(record)
        if ended is not None:  # as it ended: never run again, never lost
            record.update(cancel_requested=False)
            self.store.create(job_id, record)
            if ended == JobState.FINISHED and manifest.get("digest"):  # duplicates find it again
                self.store.claim_digest(str(manifest["digest"]), job_id, self.dedup_ttl_s)
            log.warning("job %s: record lost; rebuilt from storage as %s", job_id, ended.value)
            return record
        results = self.storage.results(job_id)
        if results:
            record.update(status=JobState.FINISHED.value, progress=100, results=[f.name for f in results])
            self.store.create(job_id, record)
            self.record_ending(job_id, record)
            log.warning("job %s: record lost; rebuilt from storage as finished", job_id)
            return record
        retrieved_by_worker = bool(manifest["payload"].get("source")) if isinstance(manifest["payload"], dict) else False
        if self.storage.input_path(job_id) is None and not retrieved_by_worker:
            return None
        record.update(status=JobState.QUEUED.value, progress=0, started_at=None, error=None)
        self.store.create(job_id, record)
        self.store.active_add(str(record.get("owner", "")), job_id)
        if manifest.get("digest"):
            self.store.claim_digest(str(manifest["digest"]), job_id, self.dedup_ttl_s)
        self.queue.enqueue(request)
        log.warning("job %s: record lost; rebuilt from storage and enqueued again", job_id)
        return record

    def _apply_stored_ending(self, record: dict[str, Any]) -> None:
        """A queued/started record whose manifest records an ending: Redis rolled back (an
        append-only file that lost its last second, a replica promoted late). The ending wins."""
        manifest = self.storage.read_manifest(record["job_id"])
        stored = manifest.get("record") if manifest is not None else None
        if not isinstance(stored, dict) or _ended_state(stored) is None:
            return
        ending = {name: stored[name] for name in TERMINAL_FIELDS if name in stored}
        was = record["status"]
        if self.store.transition(record["job_id"], JobState(was), ending):
            record.update(ending)
            self.store.active_remove(str(record.get("owner", "")), [record["job_id"]])
            log.warning("job %s: Redis said %s, storage says it ended %s; storage wins",
                        record["job_id"], was, ending["status"])
        else:  # changed meanwhile (the worker's own ending just landed): read it again
            fresh = self.store.get_many([record["job_id"]])[0]
            if fresh is not None:
                record.clear()
                record.update(fresh)

    def _requeue(self, job_id: str) -> bool:
        manifest = self.storage.read_manifest(job_id)
        if manifest is None or self.storage.input_path(job_id) is None:
            return False
        try:
            request = SegmentationRequest.from_payload(manifest["payload"])
        except (KeyError, TypeError, ValueError):
            return False
        self.queue.enqueue(request)
        log.warning("job %s: the queue lost it; enqueued again", job_id)
        return True

    def reconcile_storage(self, batch: int = 100) -> int:
        """Reconcile every stored job (records, queue, temp dirs, orphan uploads); returns how many were read."""
        job_ids = self.storage.job_ids()
        now = time.time()
        for start in range(0, len(job_ids), batch):
            chunk = job_ids[start : start + batch]
            for job_id, record in zip(chunk, self.get_many(chunk), strict=True):
                if record is None:
                    if self.storage.age_s(job_id, now) > ORPHAN_UPLOAD_AGE_S:
                        self.storage.delete_job(job_id)  # an upload that never became a job
                elif JobState(record["status"]).is_terminal:
                    self.storage.remove_temp_results(job_id)
                    self.record_ending(job_id, record, only_if_missing=True)
        return len(job_ids)

    def record_ending(self, job_id: str, record: Mapping[str, Any], *, only_if_missing: bool = False) -> bool:
        """Write the record's ending (:data:`TERMINAL_FIELDS`) into the job's manifest, atomically.

        ``only_if_missing``: leave a manifest that already records this ending alone (the
        periodic reconciliation). Returns whether the manifest was written; a storage error is
        logged (the Redis record still holds the ending).
        """
        manifest = self.storage.read_manifest(job_id)
        if manifest is None or not isinstance(manifest.get("record"), dict):
            return False
        stored: dict[str, Any] = manifest["record"]  # type: ignore[assignment]
        ending = {name: record[name] for name in TERMINAL_FIELDS if name in record}
        if only_if_missing and all(stored.get(name) == value for name, value in ending.items()):
            return False
        stored.update(ending)
        try:
            write_json_atomically(self.storage.job_dir(job_id) / MANIFEST_NAME, manifest)
        except OSError as exc:
            log.warning("job %s: could not record its ending on storage (%s)", job_id, type(exc).__name__)
            return False
        return True

    # ------------------------------------------------------------ cancel and delete

    def delete(self, job_id: str, owner: str) -> DeleteOutcome:
        record = self.get_owned(job_id, owner)
        if record is None:
            return DeleteOutcome.MISSING
        fields = {"status": JobState.CANCELED.value, "finished_at": utc_now(), "error": "canceled by the client"}
        if record["status"] == JobState.QUEUED.value and self.store.transition(job_id, JobState.QUEUED, fields):
            # The record now says canceled: a worker that already popped the job will skip it.
            self.queue.cancel(job_id)
            # The upload goes; the manifest stays, saying canceled (a Redis that loses the record
            # must not bring the job back). A DELETE of the canceled job removes it.
            self.storage.delete_input(job_id)
            self.record_ending(job_id, {**record, **fields})
            self.store.active_remove(owner, [job_id])
            return DeleteOutcome.CANCELED
        record = self.get_owned(job_id, owner)
        if record is None:
            return DeleteOutcome.MISSING
        if not JobState(record["status"]).is_terminal:
            self.store.update(job_id, {"cancel_requested": True})
            return DeleteOutcome.CANCEL_REQUESTED
        self.storage.delete_job(job_id)
        self.store.delete(job_id)
        self.store.active_remove(owner, [job_id])
        self.queue.forget(job_id)
        return DeleteOutcome.DELETED
