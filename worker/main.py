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
- Parallelism is one job per process; scale out with more worker processes or hosts on the same
  Redis and storage (see docs/deploy.md).
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer

from worker.contracts import bundle_info_key, worker_alive_key
from worker.reporting import Heartbeat
from worker.runtime import WorkerRuntime, load_runtime, runtime_context
from worker.settings import WorkerSettings

__all__ = ["SegmentationWorker", "check_worker", "connect", "run_worker"]

log = logging.getLogger(__name__)


class SegmentationWorker(SimpleWorker):
    """A non-forking RQ worker that runs each job inside :func:`runtime_context`."""

    def __init__(self, *args: Any, runtime: WorkerRuntime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runtime = runtime

    def execute_job(self, job: Any, queue: Any) -> Any:
        with runtime_context(self.runtime):
            return super().execute_job(job, queue)


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
    connection.hset(bundle_info_key(settings.queue), name, json.dumps(runtime.bundle_info))
    alive = worker_alive_key(settings.queue, name)
    ttl_ms = max(1000, int(settings.heartbeat_s * 3000))
    liveness = Heartbeat(lambda: connection.set(alive, "1", px=ttl_ms), settings.heartbeat_s)
    liveness.start()
    queue = Queue(settings.queue, connection=connection, serializer=JSONSerializer)
    worker = SegmentationWorker(
        [queue], connection=connection, serializer=JSONSerializer, name=name, runtime=runtime
    )
    log.info("worker %s listening on queue %r (storage %s)", name, settings.queue, runtime.storage_root)
    try:
        return worker.work(burst=burst, max_jobs=max_jobs, logging_level="INFO", with_scheduler=False)
    finally:
        liveness.stop()
        try:
            connection.delete(alive)
            connection.hdel(bundle_info_key(settings.queue), name)
        except Exception:  # Redis down at exit: readiness ignores entries of workers that are gone
            log.warning("could not withdraw the bundle entry of worker %s", name)


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
