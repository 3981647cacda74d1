"""The RQ implementation of :class:`service.queueing.queues.JobQueue`.

Jobs are enqueued by dotted path (:data:`worker.contracts.TASK_PATH`) with RQ's
JSONSerializer, so this process never imports the job function (or torch). The RQ job id is
our job id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service.queueing.queues import Readiness
from worker.contracts import (
    TASK_PATH,
    JobState,
    SegmentationRequest,
    alive_key,
    bundle_info_key,
    worker_alive_key,
)
from worker.memory import MemoryModel, memory_key

__all__ = ["RqJobQueue", "connect_redis"]

log = logging.getLogger(__name__)


# Records written before workers reported their key's TTL: three beats of the default 10 s.
_DEFAULT_HEARTBEAT_TTL_MS = 30_000


def _heartbeat_ttl_ms(record: Mapping[str, Any]) -> int:
    try:
        return int(record.get("heartbeat_ttl_ms") or _DEFAULT_HEARTBEAT_TTL_MS)
    except (TypeError, ValueError):
        return _DEFAULT_HEARTBEAT_TTL_MS


def connect_redis(url: str) -> Any:
    from redis import Redis

    # Short timeouts: while Redis is down the API answers 503 quickly instead of hanging.
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)


def _failure_reason(job: Job) -> str:
    result = job.latest_result()
    text = getattr(result, "exc_string", None) or ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if not last:
        return "the worker failed without a reason (it may have been killed)"
    if "abandoned" in last.lower() or "AbandonedJobError" in last:
        return "the worker running this job died (abandoned job)"
    return f"the worker failed: {last}"


class RqJobQueue:
    mode = "rq"

    def __init__(
        self,
        connection: Any,
        queue_name: str,
        *,
        job_timeout_s: int,
        result_ttl_s: int,
        failure_ttl_s: int,
    ) -> None:
        self._redis = connection
        self._queue_name = queue_name
        self._queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
        self._job_timeout_s = job_timeout_s
        self._result_ttl_s = result_ttl_s
        self._failure_ttl_s = failure_ttl_s

    def start(self) -> None:
        return None

    def stop(self) -> None:
        self._redis.close()

    def enqueue(self, request: SegmentationRequest) -> None:
        self._queue.enqueue_call(
            TASK_PATH,
            kwargs={"payload": request.to_payload()},
            timeout=self._job_timeout_s,
            result_ttl=self._result_ttl_s,
            failure_ttl=self._failure_ttl_s,
            job_id=request.job_id,
            description=f"segment job {request.job_id}",
            meta={"progress": 0},
        )

    def count(self) -> int:
        return int(self._queue.count)

    def positions(self, job_ids: Sequence[str]) -> dict[str, int | None]:
        return {job_id: self._queue.get_job_position(job_id) for job_id in job_ids}

    def lost_or_failed(self, records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        job_ids = [str(r["job_id"]) for r in records]
        jobs = Job.fetch_many(job_ids, connection=self._redis, serializer=JSONSerializer)
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(alive_key(self._queue_name, job_id))
        alive = pipe.execute()
        reasons: dict[str, str] = {}
        uptime_ms: int | None = None
        for record, job, beating in zip(records, jobs, alive, strict=True):
            job_id = str(record["job_id"])
            if record["status"] == JobState.STARTED.value and not beating:
                # The worker sets the key before it writes "started" and refreshes it while it runs.
                # A Redis that restarted less than one key TTL ago may have lost the key, or let it
                # expire while it was down: the worker has not had its chance to beat again yet.
                if uptime_ms is None:
                    uptime_ms = self._redis_uptime_ms()
                if uptime_ms < _heartbeat_ttl_ms(record):
                    continue
                reasons[job_id] = "the worker running this job stopped (killed or crashed) before it finished"
                continue
            if job is None:
                reasons[job_id] = "the queue lost this job (its RQ data expired or Redis lost it)"
                continue
            status = job.get_status(refresh=False)
            if status == JobStatus.FAILED:
                reasons[job_id] = _failure_reason(job)
            elif status == JobStatus.STOPPED:
                reasons[job_id] = "the job was stopped on the worker"
        return reasons

    def _redis_uptime_ms(self) -> int:
        return int(self._redis.info("server")["uptime_in_seconds"]) * 1000  # rounded down: errs towards waiting

    def cancel(self, job_id: str) -> bool:
        try:
            job = Job.fetch(job_id, connection=self._redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return False
        if job.get_status() != JobStatus.QUEUED:
            return False
        try:
            job.cancel()
        except InvalidJobOperation:
            return False
        return True

    def forget(self, job_id: str) -> None:
        try:
            Job.fetch(job_id, connection=self._redis, serializer=JSONSerializer).delete()
        except NoSuchJobError:
            pass

    def memory_budgets(self) -> list[tuple[MemoryModel, int]]:
        """Memory models and budgets the live workers published (worker.memory.memory_key)."""
        raw = self._redis.hgetall(memory_key(self._queue_name))
        if not raw:
            return []
        names = [k.decode() for k in raw]
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(worker_alive_key(self._queue_name, name))
        budgets: list[tuple[MemoryModel, int]] = []
        for name, beating in zip(names, pipe.execute(), strict=True):
            if not beating:
                continue
            try:
                budgets.append(MemoryModel.from_json(raw[name.encode()]))
            except ValueError:
                log.warning("worker %s published a malformed memory entry; ignored", name)
        return budgets

    def readiness(self) -> Readiness:
        """Live workers (RQ's registry) and the bundle *they* serve; mixed bundles are a problem."""
        problems: list[str] = []
        bundles: list[dict[str, str]] = []
        workers = 0
        try:
            self._redis.ping()
            registered = Worker.all(connection=self._redis, queue=self._queue)
            pipe = self._redis.pipeline(transaction=False)
            for worker in registered:
                pipe.exists(worker_alive_key(self._queue_name, worker.name))
            live = [w for w, beating in zip(registered, pipe.execute(), strict=True) if beating]
            workers = len(live)
            raw = self._redis.hgetall(bundle_info_key(self._queue_name))
            published = {k.decode(): v.decode() for k, v in raw.items()}
            for worker in live:
                entry = published.get(worker.name)
                if entry is not None:
                    info = json.loads(entry)
                    if info not in bundles:
                        bundles.append(info)
        except Exception as exc:  # Redis down: not ready, with the reason
            problems.append(f"redis unreachable: {type(exc).__name__}")
        else:
            if workers < 1:
                problems.append(f"no live worker on queue {self._queue_name!r}")
            distinct = {(b.get("name"), b.get("version")) for b in bundles}
            if len(distinct) > 1:
                problems.append(f"live workers serve different bundles: {sorted(distinct)}")
        bundle = bundles[0] if len({(b.get("name"), b.get("version")) for b in bundles}) == 1 else None
        return Readiness(
            ready=not problems, mode=self.mode, workers=workers, bundle=bundle, problems=problems, bundles=bundles
        )
