"""The ``latentseg worker`` process: an RQ worker that keeps one bundle warm.

Choice: **non-forking execution.** :class:`SegmentationWorker` is an RQ ``SimpleWorker``: the
bundle is loaded once, before the worker takes any job, and every job runs in this same process
(main thread). RQ's default ``Worker`` forks a work horse per job; a fork would either re-load
the bundle per job (seconds of torch import and weight loading) or inherit an initialised CUDA
context, which breaks CUDA in the child. Not forking avoids both, and the GPU context lives as
long as the process.

Consequences, written down:

- Job timeouts still hold: ``SimpleWorker`` enforces ``job_timeout`` with SIGALRM in the main
  thread, which raises inside the job; the job function records the failure in words.
- A process-wide liveness key (``latentseg:<queue>:worker-alive:<name>``, TTL three
  ``heartbeat_s``) is refreshed by a thread, busy or idle: ``/readyz`` counts only workers whose
  key exists, so a killed worker stops counting within seconds.
- A job that crashes the interpreter (segfault, OOM kill) takes the worker with it. While a job
  runs, a heartbeat thread refreshes ``latentseg:<queue>:alive:<job_id>`` (TTL three
  ``heartbeat_s``); when the API reads a ``started`` record whose key is gone, it marks the job
  ``failed`` ("the worker running this job stopped"), so nothing stays ``started``. (RQ's own
  abandoned-job detection is slower for a SimpleWorker: its heartbeat TTL is the job timeout.)
  Run workers under a supervisor (compose ``restart: unless-stopped``).
- SIGTERM is a warm shutdown: the running job finishes, then the worker exits (compose gives it
  ``stop_grace_period`` longer than ``job_timeout``). A second SIGTERM/SIGINT stops it at once.
- Redis outages do not end the worker. RQ retries a lost connection only while it waits for a
  job; its bookkeeping around a job (suspension check, registry maintenance, heartbeat,
  success/failure handling) raises and RQ's loop quits. :class:`SegmentationWorker` logs and
  skips the advisory calls, and :func:`run_worker` starts the loop again (same name, bundle
  still loaded) once Redis answers, unless a stop was requested. The job's own record writes
  retry through a short outage (:mod:`worker.reporting`).
- Parallelism is one job per process; scale out with more worker processes or hosts on the same
  Redis and storage (see docs/deploy.md).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer

from worker.contracts import bundle_info_key, worker_alive_key
from worker.reporting import Heartbeat
from worker.runtime import WorkerRuntime, load_runtime, runtime_context
from worker.settings import WorkerSettings

__all__ = ["SegmentationWorker", "check_worker", "connect", "run_worker"]

log = logging.getLogger(__name__)


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError)


class SegmentationWorker(SimpleWorker):
    """A non-forking RQ worker that runs each job inside :func:`runtime_context`.

    RQ's advisory bookkeeping calls (heartbeat, suspension check, maintenance) skip a Redis that
    is down instead of ending the worker; ``jobs_run`` counts executed jobs for :func:`run_worker`.
    """

    def __init__(self, *args: Any, runtime: WorkerRuntime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runtime = runtime
        self.jobs_run = 0

    @property
    def stop_requested(self) -> bool:
        return bool(getattr(self, "_stop_requested", False))

    def execute_job(self, job: Any, queue: Any) -> Any:
        try:
            with runtime_context(self.runtime):
                return super().execute_job(job, queue)
        finally:
            self.jobs_run += 1

    def _unless_redis_is_down(self, what: str, call: Any) -> Any:
        try:
            return call()
        except _redis_errors() as exc:
            log.warning("worker %s: %s skipped, Redis unreachable (%s)", self.name, what, type(exc).__name__)
            return None

    def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        return self._unless_redis_is_down("heartbeat", lambda: super(SegmentationWorker, self).heartbeat(*args, **kwargs))

    def check_for_suspension(self, burst: bool) -> None:
        self._unless_redis_is_down("suspension check", lambda: super(SegmentationWorker, self).check_for_suspension(burst))

    def run_maintenance_tasks(self) -> None:
        self._unless_redis_is_down("maintenance", lambda: super(SegmentationWorker, self).run_maintenance_tasks())


def connect(redis_url: str) -> Any:
    from redis import Redis

    return Redis.from_url(redis_url, socket_connect_timeout=5, health_check_interval=30)


def _worker_name(settings: WorkerSettings) -> str:
    import os
    import secrets

    return settings.name or f"latentseg-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def run_worker(settings: WorkerSettings, *, burst: bool = False, max_jobs: int | None = None) -> bool:
    """Load the bundle, publish what this worker serves, then work until stopped.

    Returns whether any job was processed (RQ's convention).
    """
    if not settings.redis_url:
        raise ValueError("a worker needs Redis: set REDIS_URL or pass --redis-url")
    connection = connect(settings.redis_url)
    connection.ping()
    runtime = load_runtime(
        settings.bundle, settings.storage_dir, settings.device, settings.heartbeat_s,
        backend=settings.backend, onnx_dir=settings.onnx_dir,
    )
    name = _worker_name(settings)
    alive = worker_alive_key(settings.queue, name)
    ttl_ms = max(1000, int(settings.heartbeat_s * 3000))
    liveness = Heartbeat(lambda: connection.set(alive, "1", px=ttl_ms), settings.heartbeat_s)
    queue = Queue(settings.queue, connection=connection, serializer=JSONSerializer)
    log.info("worker %s listening on queue %r (storage %s)", name, settings.queue, runtime.storage_root)
    jobs_run = 0
    try:
        while True:
            worker: SegmentationWorker | None = None
            left = None if max_jobs is None else max_jobs - jobs_run
            try:
                worker = SegmentationWorker(
                    [queue], connection=connection, serializer=JSONSerializer, name=name, runtime=runtime
                )
                # Published again after every outage: a Redis that restarted may have lost it.
                connection.hset(bundle_info_key(settings.queue), name, json.dumps(runtime.bundle_info))
                if not liveness.running:
                    liveness.start()
                worker.work(burst=burst, max_jobs=left, logging_level="INFO", with_scheduler=False)
            except _redis_errors() as exc:  # from RQ's start-up or teardown, or our own publishing
                log.warning("worker %s: Redis unreachable (%s)", name, type(exc).__name__)
            jobs_run += worker.jobs_run if worker is not None else 0
            stop_requested = worker is not None and worker.stop_requested
            if burst or stop_requested or (max_jobs is not None and jobs_run >= max_jobs):
                return jobs_run > 0
            log.warning("worker %s: RQ's loop ended unexpectedly; starting it again once Redis answers", name)
            if not _wait_for_redis(connection, lambda: worker is not None and worker.stop_requested):
                return jobs_run > 0
            if worker is not None:
                try:  # a teardown that met a dead Redis left the name registered as alive
                    worker.register_death()
                except _redis_errors():
                    pass
    finally:
        liveness.stop()
        try:
            connection.delete(alive)
            connection.hdel(bundle_info_key(settings.queue), name)
        except Exception:  # Redis down at exit: readiness ignores entries of workers that are gone
            log.warning("could not withdraw the bundle entry of worker %s", name)


def _wait_for_redis(connection: Any, stopping: Any, max_wait_s: float = 5.0) -> bool:
    """Ping with backoff until Redis answers (True) or a stop is requested (False)."""
    wait = 0.5
    while not stopping():
        try:
            connection.ping()
            return True
        except _redis_errors():
            time.sleep(wait)
            wait = min(wait * 2, max_wait_s)
    return False


def check_worker(settings: WorkerSettings) -> tuple[bool, str]:
    """A health check: Redis answers and a worker of this host is registered on the queue."""
    if not settings.redis_url:
        return False, "no REDIS_URL"
    try:
        connection = connect(settings.redis_url)
        queue = Queue(settings.queue, connection=connection, serializer=JSONSerializer)
        workers = Worker.all(queue=queue)
    except Exception as exc:  # any Redis trouble means unhealthy
        return False, f"redis unreachable: {exc}"
    host = socket.gethostname()
    mine = [w for w in workers if (w.hostname or "") == host]
    if not mine:
        return False, f"no worker of host {host} registered on queue {settings.queue!r}"
    return True, f"{len(mine)} worker(s) of host {host} on queue {settings.queue!r}"
