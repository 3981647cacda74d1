"""Job reporters: how the job function writes state and progress into our durable record.

:class:`RecordReporter` turns lifecycle events into record field updates through any
``update(fields)`` callable, so RQ mode (a Redis hash, plus ``job.meta["progress"]``) and
embedded mode (an in-memory store) share one implementation. No torch here.

Claiming: :meth:`RecordReporter.started` moves the record from ``queued`` to ``started`` with a
compare-and-set; the API cancels a queued job with the same compare-and-set, so a job the API
canceled is never run (the DELETE vs pick-up race) and a job a worker took is never half-deleted.

Interrupting a running job: while the job is inside :meth:`RecordReporter.interruptible`, the
:class:`Heartbeat` thread asks ``check()`` each beat; a reason (a cancel request, the deadline)
raises :class:`~worker.contracts.JobCanceled` / :class:`~worker.contracts.JobTimedOut` in the job's
thread (``PyThreadState_SetAsyncExc``: delivered at the next Python bytecode, so a long native
call finishes first). A lock makes sure the exception can only land inside that region.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from worker.contracts import (
    TRANSITION_LUA,
    JobInterrupted,
    JobState,
    alive_key,
    encode_fields,
    record_key,
    utc_now,
)

__all__ = ["Heartbeat", "Interrupter", "RecordReporter", "rq_reporter"]

log = logging.getLogger(__name__)

FieldUpdate = Callable[[Mapping[str, Any]], None]
Claim = Callable[[Mapping[str, Any]], bool]
Check = Callable[[], type[JobInterrupted] | None]


class Interrupter:
    """Raises an exception class in one thread, only while that thread is inside :meth:`region`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self.fired: type[JobInterrupted] | None = None

    @contextmanager
    def region(self) -> Iterator[None]:
        with self._lock:
            self._thread_id = threading.get_ident()
        try:
            yield
        finally:
            with self._lock:
                self._thread_id = None
            time.sleep(0)  # a pending async exception is delivered here, still inside the caller's try

    def fire(self, exc: type[JobInterrupted]) -> bool:
        with self._lock:
            if self._thread_id is None or self.fired is not None:
                return False
            self.fired = exc
            done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(exc))
            return bool(done == 1)


class Heartbeat:
    """A daemon thread that calls ``beat()`` (and ``check()``) every ``interval_s`` between start and stop.

    In RQ mode ``beat`` refreshes :func:`worker.contracts.alive_key` with a TTL of three
    intervals; the API marks a ``started`` job whose key is gone as failed (its worker died).
    ``check`` returns an exception class when the job must stop; it is fired through the
    :class:`Interrupter`.
    """

    def __init__(
        self,
        beat: Callable[[], None],
        interval_s: float,
        check: Check | None = None,
        interrupter: Interrupter | None = None,
    ) -> None:
        self._beat = beat
        self._interval_s = interval_s
        self._check = check
        self._interrupter = interrupter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # The first beat must land before the record says "started"; a Redis restarting just as
        # the job was popped delays the job instead of failing it.
        _retrying(self._beat)
        self._thread = threading.Thread(target=self._run, name="latentseg-job-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._beat()
            except Exception:  # a missed beat is retried; three in a row fail the job on read
                log.warning("job heartbeat failed", exc_info=True)
            if self._check is None or self._interrupter is None:
                continue
            try:
                reason = self._check()
            except Exception:
                log.warning("job stop check failed", exc_info=True)
                continue
            if reason is not None:
                self._interrupter.fire(reason)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self._interval_s + 1)


class RecordReporter:
    """Writes ``status``, ``progress`` (0-100), timestamps, ``results``, ``bundle`` and ``error`` fields.

    Progress is written only when the integer percentage changes, so a fine-grained callback
    does not flood Redis. ``on_progress`` (optional) also receives each new percentage. A
    ``heartbeat`` (optional) runs from :meth:`started` until the job ends. ``claim`` is the
    compare-and-set from ``queued``; without one, :meth:`started` always claims.
    """

    def __init__(
        self,
        update: FieldUpdate,
        on_progress: Callable[[int], None] | None = None,
        heartbeat: Heartbeat | None = None,
        claim: Claim | None = None,
        interrupter: Interrupter | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self._update = update
        self._on_progress = on_progress
        self._heartbeat = heartbeat
        self._claim = claim
        self._interrupter = interrupter or Interrupter()
        self._cleanup = cleanup
        self._last_percent = -1

    def started(self) -> bool:
        if self._heartbeat is not None:
            self._heartbeat.start()  # before the record says "started": see Heartbeat
        fields = {"status": JobState.STARTED.value, "started_at": utc_now(), "progress": 0}
        if self._claim is not None:
            claimed = self._claim(fields)
        else:
            self._update(fields)
            claimed = True
        if not claimed:
            self._stop_heartbeat()
            return False
        self._last_percent = 0
        return True

    def interruptible(self) -> Any:
        return self._interrupter.region()

    def progress(self, fraction: float) -> None:
        percent = max(0, min(100, int(float(fraction) * 100)))
        if percent == self._last_percent:
            return
        self._last_percent = percent
        try:
            self._update({"progress": percent})
        except Exception:  # progress is advisory (e.g. Redis restarting); never fail a job over it
            log.warning("could not record progress", exc_info=True)
        if self._on_progress is not None:
            self._on_progress(percent)

    @property
    def percent(self) -> int:
        return self._last_percent

    def finished(self, results: list[str], bundle: Mapping[str, str] | None = None) -> None:
        fields: dict[str, Any] = {
            "status": JobState.FINISHED.value, "progress": 100, "finished_at": utc_now(), "results": list(results)
        }
        if bundle is not None:
            fields["bundle"] = dict(bundle)
        self._update(fields)
        self._stop_heartbeat()

    def annotate(self, fields: Mapping[str, Any]) -> None:
        """Write extra fields (the DICOMweb push status) into the record."""
        self._update(dict(fields))

    def failed(self, reason: str) -> None:
        self._update({"status": JobState.FAILED.value, "finished_at": utc_now(), "error": reason})
        self._stop_heartbeat()

    def canceled(self, reason: str) -> None:
        self._update({"status": JobState.CANCELED.value, "finished_at": utc_now(), "error": reason})
        self._stop_heartbeat()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._cleanup is not None:
            try:
                self._cleanup()
            except Exception:
                log.warning("reporter cleanup failed", exc_info=True)


def _retrying(call: Callable[[], Any], attempts: int = 8, first_wait_s: float = 0.5) -> Any:
    """Terminal record writes survive a short Redis restart."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    wait = first_wait_s
    for attempt in range(attempts):
        try:
            return call()
        except (RedisConnectionError, RedisTimeoutError):
            if attempt == attempts - 1:
                raise
            time.sleep(wait)
            wait = min(wait * 2, 8.0)
    return None


def rq_reporter(heartbeat_s: float = 10.0) -> RecordReporter:
    """A reporter for the RQ job running in this process: our Redis record, ``job.meta`` and a heartbeat.

    The record key derives from the job's queue (``job.origin``), the same namespace the API used.
    """
    from rq import get_current_job

    from worker.contracts import JobCanceled

    job = get_current_job()
    if job is None:
        raise RuntimeError("rq_reporter() called outside an RQ job; pass a reporter explicitly")
    connection = job.connection
    key = record_key(job.origin, job.id)
    transition = connection.register_script(TRANSITION_LUA)
    ttl_ms = max(1000, int(heartbeat_s * 3000))

    def update(fields: Mapping[str, Any]) -> None:
        def write() -> None:
            # A record deleted through the API stays deleted (re-creating it would drop its TTL).
            if connection.exists(key):
                connection.hset(key, mapping=encode_fields(fields))
            else:
                log.warning("job %s: its record is gone; not recreating it", job.id)

        _retrying(write) if "status" in fields else write()

    def claim(fields: Mapping[str, Any]) -> bool:
        args: list[str] = [encode_fields({"status": JobState.QUEUED.value})["status"]]
        # The API needs the key's TTL to tell a dead worker from a Redis that has just restarted.
        for name, value in encode_fields({**fields, "heartbeat_ttl_ms": ttl_ms}).items():
            args += [name, value]
        return bool(_retrying(lambda: transition(keys=[key], args=args)))

    def on_progress(percent: int) -> None:
        job.meta["progress"] = percent
        try:
            job.save_meta()
        except Exception:  # progress is advisory; never fail a job over it
            log.warning("job %s: could not save progress meta", job.id, exc_info=True)

    alive = alive_key(job.origin, job.id)

    def beat() -> None:
        connection.set(alive, "1", px=ttl_ms)

    def check() -> type[JobInterrupted] | None:
        return JobCanceled if connection.hget(key, "cancel_requested") == b"true" else None

    def cleanup() -> None:
        connection.delete(alive)

    interrupter = Interrupter()
    return RecordReporter(
        update, on_progress, Heartbeat(beat, heartbeat_s, check, interrupter), claim, interrupter, cleanup
    )
