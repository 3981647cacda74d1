"""Job reporters: how the job function writes state and progress into our durable record.

:class:`RecordReporter` turns lifecycle events into record field updates through any
``update(fields)`` callable, so RQ mode (a Redis hash, plus ``job.meta["progress"]``) and
embedded mode (an in-memory store) share one implementation. No torch here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from worker.contracts import JobState, alive_key, encode_fields, record_key, utc_now

__all__ = ["Heartbeat", "RecordReporter", "rq_reporter"]

log = logging.getLogger(__name__)

FieldUpdate = Callable[[Mapping[str, Any]], None]


class Heartbeat:
    """A daemon thread that calls ``beat()`` every ``interval_s`` between :meth:`start` and :meth:`stop`.

    In RQ mode ``beat`` refreshes :func:`worker.contracts.alive_key` with a TTL of three
    intervals; the API marks a ``started`` job whose key is gone as failed (its worker died).
    """

    def __init__(self, beat: Callable[[], None], interval_s: float) -> None:
        self._beat = beat
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._beat()
        self._thread = threading.Thread(target=self._run, name="latentseg-job-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._beat()
            except Exception:  # a missed beat is retried; three in a row fail the job on read
                log.warning("job heartbeat failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._interval_s + 1)


class RecordReporter:
    """Writes ``status``, ``progress`` (0-100), timestamps, ``results`` and ``error`` fields.

    Progress is written only when the integer percentage changes, so a fine-grained callback
    does not flood Redis. ``on_progress`` (optional) also receives each new percentage. A
    ``heartbeat`` (optional) runs from :meth:`started` until the job ends.
    """

    def __init__(
        self,
        update: FieldUpdate,
        on_progress: Callable[[int], None] | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self._update = update
        self._on_progress = on_progress
        self._heartbeat = heartbeat
        self._last_percent = -1

    def started(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.start()  # before the record says "started": see Heartbeat
        self._update({"status": JobState.STARTED.value, "started_at": utc_now(), "progress": 0})
        self._last_percent = 0

    def progress(self, fraction: float) -> None:
        percent = max(0, min(100, int(float(fraction) * 100)))
        if percent == self._last_percent:
            return
        self._last_percent = percent
        self._update({"progress": percent})
        if self._on_progress is not None:
            self._on_progress(percent)

    def finished(self, results: list[str]) -> None:
        self._update(
            {"status": JobState.FINISHED.value, "progress": 100, "finished_at": utc_now(), "results": list(results)}
        )
        self._stop_heartbeat()

    def failed(self, reason: str) -> None:
        self._update({"status": JobState.FAILED.value, "finished_at": utc_now(), "error": reason})
        self._stop_heartbeat()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()


def rq_reporter(heartbeat_s: float = 10.0) -> RecordReporter:
    """A reporter for the RQ job running in this process: our Redis record, ``job.meta`` and a heartbeat.

    The record key derives from the job's queue (``job.origin``), the same namespace the API used.
    """
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("rq_reporter() called outside an RQ job; pass a reporter explicitly")
    connection = job.connection
    key = record_key(job.origin, job.id)

    def update(fields: Mapping[str, Any]) -> None:
        # A record deleted through the API stays deleted (re-creating it would drop its TTL).
        if connection.exists(key):
            connection.hset(key, mapping=encode_fields(fields))
        else:
            log.warning("job %s: record %s is gone; not recreating it", job.id, key)

    def on_progress(percent: int) -> None:
        job.meta["progress"] = percent
        try:
            job.save_meta()
        except Exception:  # progress is advisory; never fail a job over it
            log.warning("job %s: could not save progress meta", job.id, exc_info=True)

    alive = alive_key(job.origin, job.id)
    ttl_ms = max(1000, int(heartbeat_s * 3000))

    def beat() -> None:
        connection.set(alive, "1", px=ttl_ms)

    return RecordReporter(update, on_progress, Heartbeat(beat, heartbeat_s))
