"""The queue abstraction with two implementations: RQ (:mod:`service.queueing.rq_queue`) and in-process.

Both run the same job function, :func:`worker.tasks.run_segmentation`. The in-process queue is
embedded mode (``latentseg serve`` without Redis): one daemon thread loads the bundle once and
runs jobs one at a time. torch is imported by that thread when it starts (in the app's
lifespan), never by building the app.

Embedded records live in memory, so a restart rebuilds them from the job manifests on storage
(:meth:`service.queueing.jobs.JobService.reconcile_storage`): endings come back as they were and jobs
that never started are enqueued again. The worker thread marks a job ``started`` in its
manifest when it claims it; a job that a restart finds still marked so was running when the
process died (SIGKILL, the OOM killer, a crash), and it ends ``failed`` with
:data:`DIED_WHILE_RUNNING` instead of running again, as a job whose RQ worker was killed does.
A job that kills the process therefore cannot kill it again at every restart.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from worker.contracts import (
    MANIFEST_NAME,
    JobCanceled,
    JobInterrupted,
    JobState,
    JobTimedOut,
    SegmentationRequest,
    job_dir,
    utc_now,
)
from worker.memory import MemoryModel

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

__all__ = ["DIED_WHILE_RUNNING", "InProcessJobQueue", "JobQueue", "Readiness"]

log = logging.getLogger(__name__)
DIED_WHILE_RUNNING = "stopped: the server stopped while this job ran; submit it again"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    mode: str
    workers: int
    bundle: dict[str, str] | None
    problems: list[str] = field(default_factory=list)
    bundles: list[dict[str, str]] = field(default_factory=list)


class JobQueue(Protocol):
    mode: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def enqueue(self, request: SegmentationRequest) -> None: ...

    def count(self) -> int:
        """Jobs waiting in the queue (for the global queue cap)."""
        ...

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

    def memory_budgets(self) -> list[tuple[MemoryModel, int]]:
        """Each live worker's memory model and budget (MiB); empty when none is known."""
        ...


class RecordAccess(Protocol):
    """The part of :class:`service.queueing.jobs.JobStore` the embedded worker needs."""

    def update(self, job_id: str, fields: Mapping[str, Any]) -> bool: ...

    def transition(self, job_id: str, expected: JobState, fields: Mapping[str, Any]) -> bool: ...

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]: ...


class InProcessJobQueue:
    """Embedded mode: a worker thread in the API process, running the same job function.

    ``records`` is the :class:`~service.queueing.jobs.MemoryJobStore`; ``runtime_factory()`` loads the
    bundle once, in the thread. The job timeout and cancellation of a running job work as in
    RQ mode's :mod:`worker.reporting`: a watchdog raises inside the job thread at its next
    Python bytecode (so a long native call finishes first).
    """

    mode = "embedded"

    def __init__(
        self,
        records: RecordAccess,
        runtime_factory: Callable[[], WorkerRuntime],
        *,
        job_timeout_s: float,
        watchdog_s: float = 0.5,
    ) -> None:
        self._records = records
        self._runtime_factory = runtime_factory
        self._job_timeout_s = job_timeout_s
        self._watchdog_s = watchdog_s
        self._pending: deque[SegmentationRequest] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._bundle: dict[str, str] | None = None
        self._memory: tuple[MemoryModel, int] | None = None
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

    def count(self) -> int:
        with self._cond:
            return len(self._pending)

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

    def memory_budgets(self) -> list[tuple[MemoryModel, int]]:
        """The embedded runtime's, once its bundle is loaded."""
        return [self._memory] if self._memory is not None else []

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
        return Readiness(
            ready=ready, mode=self.mode, workers=1 if alive else 0, bundle=self._bundle, problems=problems,
            bundles=[self._bundle] if self._bundle else [],
        )

    def _next(self) -> SegmentationRequest | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            return self._pending.popleft()

    def _claim(self, storage_root: Path | None, job_id: str, fields: Mapping[str, Any]) -> bool:
        """queued -> started in the record, then in the manifest (see the module docstring)."""
        from worker.tasks import record_terminal_state

        if not self._records.transition(job_id, JobState.QUEUED, fields):
            return False
        if storage_root is not None:
            started = {"status": fields["status"], "started_at": fields["started_at"]}
            record_terminal_state(storage_root, job_id, started)
        return True

    def _fail_if_it_died_running(self, storage_root: Path, job_id: str) -> bool:
        """A job whose manifest says it started, popped by a fresh thread: the process running it
        died. Fail it with the reason (record, manifest) and drop the dead run's temp results."""
        import json

        from worker.tasks import record_terminal_state

        try:
            manifest = json.loads((job_dir(storage_root, job_id) / MANIFEST_NAME).read_text())
            stored = manifest["record"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not isinstance(stored, dict) or stored.get("status") != JobState.STARTED.value:
            return False
        ending = {
            "status": JobState.FAILED.value, "error": DIED_WHILE_RUNNING, "finished_at": utc_now(),
            "started_at": stored.get("started_at"), "progress": 0,
        }
        if self._records.transition(job_id, JobState.QUEUED, ending):
            record_terminal_state(storage_root, job_id, ending)
            for partial in job_dir(storage_root, job_id).glob(".results-*"):
                shutil.rmtree(partial, ignore_errors=True)
            log.warning("embedded worker: job %s was running when the server stopped; failed", job_id)
        return True

    def _reporter(self, job_id: str, storage_root: Path | None) -> Any:
        import time

        from worker.reporting import Heartbeat, Interrupter, RecordReporter

        deadline = time.monotonic() + self._job_timeout_s

        def check() -> type[JobInterrupted] | None:
            if time.monotonic() > deadline:
                return JobTimedOut
            record = self._records.get_many([job_id])[0]
            return JobCanceled if record is not None and record.get("cancel_requested") else None

        interrupter = Interrupter()
        return RecordReporter(
            lambda fields: self._records.update(job_id, fields),  # type: ignore[arg-type, return-value]
            heartbeat=Heartbeat(lambda: None, self._watchdog_s, check, interrupter),
            claim=lambda fields: self._claim(storage_root, job_id, fields),
            interrupter=interrupter,
        )

    def _run(self) -> None:
        from worker.tasks import run_segmentation

        runtime: WorkerRuntime | None = None
        try:
            runtime = self._runtime_factory()
            self._bundle = runtime.bundle_info
            if runtime.memory is not None and runtime.memory_budget_mb is not None:
                self._memory = (runtime.memory, runtime.memory_budget_mb)
        except Exception as exc:
            self._load_error = " ".join(str(exc).split()) or type(exc).__name__
            log.exception("embedded worker: the bundle could not be loaded")
        while (request := self._next()) is not None:
            job_id = request.job_id
            if runtime is not None and self._fail_if_it_died_running(runtime.storage_root, job_id):
                continue
            reporter = self._reporter(job_id, runtime.storage_root if runtime is not None else None)
            if runtime is None:
                if reporter.started():
                    reporter.failed(f"the bundle could not be loaded: {self._load_error}")
                continue
            try:
                run_segmentation(request.to_payload(), runtime=runtime, reporter=reporter)
            except Exception:
                log.info("embedded worker: job %s failed (recorded)", job_id)
