"""The queue abstraction with two implementations: RQ (:mod:`service.rq_queue`) and in-process.

Both run the same job function, :func:`worker.tasks.run_segmentation`. The in-process queue is
embedded mode (``latentseg serve`` without Redis): one daemon thread loads the bundle once and
runs jobs one at a time. torch is imported by that thread when it starts (in the app's
lifespan), never by building the app.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from worker.contracts import SegmentationRequest

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

__all__ = ["InProcessJobQueue", "JobQueue", "Readiness"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    mode: str
    workers: int
    bundle: dict[str, str] | None
    problems: list[str] = field(default_factory=list)


class JobQueue(Protocol):
    mode: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def enqueue(self, request: SegmentationRequest) -> None: ...

    def positions(self, job_ids: Sequence[str]) -> dict[str, int | None]: ...

    def lost_or_failed(self, records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """For records still queued/started: job id -> reason, where the queue knows the job is dead."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Remove a job that has not started; False if it already started (or is unknown)."""
        ...

    def forget(self, job_id: str) -> None:
        """Drop the queue's own data about a terminal job."""
        ...

    def readiness(self) -> Readiness: ...


RecordUpdate = Callable[[str, Mapping[str, Any]], bool]


class InProcessJobQueue:
    """Embedded mode: a worker thread in the API process, running the same job function.

    ``update_record(job_id, fields)`` writes our record (the :class:`~service.jobs.MemoryJobStore`);
    ``runtime_factory()`` loads the bundle once, in the thread. There is no job timeout here:
    a thread cannot be interrupted safely; use RQ workers for that.
    """

    mode = "embedded"

    def __init__(self, update_record: RecordUpdate, runtime_factory: Callable[[], WorkerRuntime]) -> None:
        self._update_record = update_record
        self._runtime_factory = runtime_factory
        self._pending: deque[SegmentationRequest] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._bundle: dict[str, str] | None = None
        self._load_error: str | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="latentseg-embedded-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def enqueue(self, request: SegmentationRequest) -> None:
        with self._cond:
            self._pending.append(request)
            self._cond.notify_all()

    def positions(self, job_ids: Sequence[str]) -> dict[str, int | None]:
        with self._cond:
            order = {r.job_id: i for i, r in enumerate(self._pending)}
        return {job_id: order.get(job_id) for job_id in job_ids}

    def lost_or_failed(self, records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        return {}  # the thread itself writes every outcome into the same in-memory records

    def cancel(self, job_id: str) -> bool:
        with self._cond:
            for request in self._pending:
                if request.job_id == job_id:
                    self._pending.remove(request)
                    return True
        return False

    def forget(self, job_id: str) -> None:
        return None

    def readiness(self) -> Readiness:
        problems: list[str] = []
        alive = self._thread is not None and self._thread.is_alive()
        if not alive:
            problems.append("the embedded worker thread is not running")
        if self._load_error:
            problems.append(f"the bundle could not be loaded: {self._load_error}")
        elif self._bundle is None:
            problems.append("the bundle is still loading")
        ready = not problems
        return Readiness(ready=ready, mode=self.mode, workers=1 if alive else 0, bundle=self._bundle, problems=problems)

    def _next(self) -> SegmentationRequest | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            return self._pending.popleft()

    def _run(self) -> None:
        from worker.reporting import RecordReporter
        from worker.tasks import run_segmentation

        runtime: WorkerRuntime | None = None
        try:
            runtime = self._runtime_factory()
            self._bundle = runtime.bundle_info
        except Exception as exc:
            self._load_error = " ".join(str(exc).split()) or type(exc).__name__
            log.exception("embedded worker: the bundle could not be loaded")
        while (request := self._next()) is not None:
            job_id = request.job_id
            reporter = RecordReporter(lambda fields, job_id=job_id: self._update_record(job_id, fields))
            if runtime is None:
                reporter.failed(f"the bundle could not be loaded: {self._load_error}")
                continue
            try:
                run_segmentation(request.to_payload(), runtime=runtime, reporter=reporter)
            except Exception:
                log.info("embedded worker: job %s failed (recorded)", job_id)
