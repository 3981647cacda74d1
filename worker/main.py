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
- SIGTERM/SIGINT (:class:`worker.runtime.StopControl`, installed before the bundle loads):
  an idle worker exits at once (the blocking wait for a job is interrupted; status 0). A busy
  one finishes its job, takes no other, then exits 0 (compose gives it ``stop_grace_period``
  longer than ``job_timeout``; ``LATENTSEG_STOP_GRACE_S`` bounds the wait from inside). A
  second signal stops the running job: it ends ``failed`` ("stopped: the worker was shut
  down ..."), nothing of it stays visible, and the same upload can be submitted again.
- Redis data loss (``FLUSHALL``, a restart without persistence): the liveness thread writes the
  liveness key, the published bundle and, when missing, RQ's registration of this worker every
  ``heartbeat_s``, so ``/readyz`` and ``latentseg worker --check`` recover within one beat.
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

import dataclasses
import json
import logging
import socket
import threading
import time
from typing import Any

from rq import Queue, SimpleWorker, Worker, worker_registration
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer

from worker.contracts import bundle_info_key, worker_alive_key
from worker.memory import memory_key
from worker.reporting import Heartbeat
from worker.runtime import StopControl, WorkerRuntime, WorkerStopping, load_runtime, runtime_context
from worker.settings import WorkerSettings

__all__ = ["SegmentationWorker", "check_worker", "connect", "run_worker"]

log = logging.getLogger(__name__)
UNSUBSCRIBE_WAIT_S = 3.0  # RQ's pubsub teardown; its thread reads with a 60 s timeout and may hold the socket


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError)


def _stoppable_queue_class(stop: StopControl) -> type[Queue]:
    """RQ's Queue whose blocking pop a stop signal may interrupt (and nothing else of the dequeue,
    so a job is never popped and then dropped by the interrupt)."""

    class StoppableQueue(Queue):
        @classmethod
        def lmove(cls, connection: Any, queue_key: str, timeout: int | None) -> Any:
            with stop.idle_wait():
                return super().lmove(connection, queue_key, timeout)

        @classmethod
        def lpop(cls, queue_keys: Any, timeout: int | None, connection: Any = None) -> Any:
            with stop.idle_wait():
                return super().lpop(queue_keys, timeout, connection=connection)

    return StoppableQueue


class SegmentationWorker(SimpleWorker):
    """A non-forking RQ worker that runs each job inside :func:`runtime_context`.

    RQ's advisory bookkeeping calls (heartbeat, suspension check, maintenance) skip a Redis that
    is down instead of ending the worker; ``jobs_run`` counts executed jobs for :func:`run_worker`.
    Stop signals are the runtime's :class:`~worker.runtime.StopControl`'s, not RQ's handlers
    (RQ's warm shutdown is only a flag while a job runs; idle, it raised anywhere in its loop).
    """

    def __init__(self, *args: Any, runtime: WorkerRuntime, **kwargs: Any) -> None:
        if runtime.stop is None:
            raise ValueError("SegmentationWorker needs a runtime with a StopControl")
        self._stop = runtime.stop
        super().__init__(*args, queue_class=_stoppable_queue_class(runtime.stop), **kwargs)
        self.runtime = runtime
        self.jobs_run = 0

    # RQ's loop reads and writes this flag; it is the StopControl's.
    @property  # type: ignore[override]
    def _stop_requested(self) -> bool:
        return self._stop.requested

    @_stop_requested.setter
    def _stop_requested(self, value: bool) -> None:
        if value:
            self._stop.requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop.requested

    def _install_signal_handlers(self) -> None:
        return None  # run_worker installed the StopControl's

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        try:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        except WorkerStopping:
            raise StopRequested() from None

    def unsubscribe(self) -> None:
        """RQ's unsubscribe, waited for at most ``UNSUBSCRIBE_WAIT_S``. RQ's pubsub thread reads with a
        60 s timeout, and an UNSUBSCRIBE that meets it mid-read can wait for it (seen once in CI: an idle
        worker stopped by SIGINT hung here after "unsubscribing"). The thread is a daemon and RQ has
        already registered the worker's death, so the worker goes on with its exit."""
        closing = threading.Thread(target=super().unsubscribe, name=f"{self.name}-unsubscribe", daemon=True)
        closing.start()
        closing.join(UNSUBSCRIBE_WAIT_S)
        if closing.is_alive():
            log.warning("worker %s: RQ's pubsub did not close within %g s; going on without it", self.name,
                        UNSUBSCRIBE_WAIT_S)

    def republish(self) -> None:
        """Register this worker with RQ again if Redis lost its registration (FLUSHALL, restart
        without persistence); RQ itself registers only at start."""
        queue_key = worker_registration.WORKERS_BY_QUEUE_KEY % self.queues[0].name
        pipe = self.connection.pipeline(transaction=False)
        pipe.sismember(queue_key, self.key)
        pipe.hexists(self.key, "birth")
        pipe.hexists(self.key, "death")
        member, born, dead = pipe.execute()
        if (member and born) or dead or self.birth_date is None:
            return
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping={**self.serialize(), "state": str(self.get_state())})
            worker_registration.register(self, pipe)
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()
        log.warning("worker %s: Redis had lost this worker's registration; registered again", self.name)

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

    Returns whether any job was processed (RQ's convention). A stop signal during start-up or
    while idle returns at once (see :class:`worker.runtime.StopControl`).
    """
    if not settings.redis_url:
        raise ValueError("a worker needs Redis: set REDIS_URL or pass --redis-url")
    stop = StopControl(grace_s=settings.stop_grace_s)
    stop.install()
    try:
        with stop.idle_wait():
            connection = connect(settings.redis_url)
            connection.ping()
            log.info("worker: Redis answered; loading the bundle")
            runtime = load_runtime(
                settings.bundle, settings.storage_dir, settings.device, settings.heartbeat_s,
                backend=settings.backend, onnx_dir=settings.onnx_dir, memory_budget_mb=settings.worker_memory_mb,
                sampling_caps=settings.sampling_caps,
            )
    except WorkerStopping:
        log.info("worker: stopped while starting")
        return False
    runtime = dataclasses.replace(runtime, stop=stop)
    try:
        return _work(settings, connection, runtime, burst, max_jobs)
    finally:
        stop.close()


def _work(
    settings: WorkerSettings, connection: Any, runtime: WorkerRuntime, burst: bool, max_jobs: int | None
) -> bool:
    assert runtime.stop is not None
    stop = runtime.stop
    name = _worker_name(settings)
    alive = worker_alive_key(settings.queue, name)
    bundles = bundle_info_key(settings.queue)
    bundle_json = json.dumps(runtime.bundle_info)
    memory = memory_key(settings.queue)
    memory_json = runtime.memory.to_json(runtime.memory_budget_mb or 0) if runtime.memory is not None else None
    ttl_ms = max(1000, int(settings.heartbeat_s * 3000))
    current: list[SegmentationWorker] = []  # the RQ worker now working, for the liveness thread

    def beat() -> None:
        # Every beat, not only at start: a Redis that lost its data (FLUSHALL, a restart without
        # persistence) gets this worker's liveness, bundle and RQ registration back within one beat.
        pipe = connection.pipeline(transaction=False)
        pipe.set(alive, "1", px=ttl_ms)
        pipe.hset(bundles, name, bundle_json)
        if memory_json is not None:
            pipe.hset(memory, name, memory_json)
        pipe.execute()
        for worker in list(current):
            worker.republish()

    liveness = Heartbeat(beat, settings.heartbeat_s)
    log.info("worker %s listening on queue %r (storage %s)", name, settings.queue, runtime.storage_root)
    jobs_run = 0
    try:
        while True:
            worker: SegmentationWorker | None = None
            left = None if max_jobs is None else max_jobs - jobs_run
            try:
                worker = SegmentationWorker(
                    [settings.queue], connection=connection, serializer=JSONSerializer, name=name, runtime=runtime
                )
                connection.hset(bundles, name, bundle_json)
                if not liveness.running:
                    liveness.start()
                current[:] = [worker]
                worker.work(burst=burst, max_jobs=left, logging_level="INFO", with_scheduler=False)
            except _redis_errors() as exc:  # from RQ's start-up or teardown, or our own publishing
                log.warning("worker %s: Redis unreachable (%s)", name, type(exc).__name__)
            except StopRequested:  # a stop signal during RQ's start-up or teardown
                if worker is not None:
                    _quietly(worker.register_death)
            finally:
                current.clear()
            jobs_run += worker.jobs_run if worker is not None else 0
            if burst or stop.requested or (max_jobs is not None and jobs_run >= max_jobs):
                if stop.requested:
                    log.info("worker %s: stopped on request after %d job(s)", name, jobs_run)
                return jobs_run > 0
            log.warning("worker %s: RQ's loop ended unexpectedly; starting it again once Redis answers", name)
            if not _wait_for_redis(connection, stop):
                return jobs_run > 0
            if worker is not None:  # a teardown that met a dead Redis left the name registered as alive
                _quietly(worker.register_death)
    finally:
        liveness.stop()
        try:
            connection.delete(alive)
            connection.hdel(bundles, name)
            connection.hdel(memory, name)
        except Exception:  # Redis down at exit: readiness ignores entries of workers that are gone
            log.warning("could not withdraw the bundle entry of worker %s", name)


def _quietly(call: Any) -> None:
    try:
        call()
    except (*_redis_errors(), StopRequested):
        pass


def _wait_for_redis(connection: Any, stop: StopControl, max_wait_s: float = 5.0) -> bool:
    """Ping with backoff until Redis answers (True) or a stop is requested (False)."""
    wait = 0.5
    while not stop.requested:
        try:
            connection.ping()
            return True
        except _redis_errors():
            stop.wake.wait(wait)
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
