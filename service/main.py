"""The FastAPI application: ``create_app(settings)``.

With ``REDIS_URL`` set, jobs go to RQ workers (``latentseg worker``); without it the app runs in
embedded mode with an in-process worker thread running the same job function. Building the app
never imports torch; in embedded mode the worker thread imports it when the app starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from model.targets.vocabulary import default_vocabulary
from service.api_surface import error_response, install_api_surface
from service.auth import Keyring, check_open_mode
from service.deps import Services
from service.queueing.jobs import JobService, JobStore, MemoryJobStore, RedisJobStore
from service.queueing.queues import InProcessJobQueue, JobQueue
from service.routes import health, job_input, jobs, preview, segment, targets, web
from service.settings import ServiceSettings
from service.slow_clients import UploadsInFlight
from service.queueing.storage import Storage

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger(__name__)


def _load_embedded_runtime(settings: ServiceSettings) -> WorkerRuntime:
    """Runs in the embedded worker thread: the only place the API process imports torch."""
    from worker.runtime import load_runtime

    return load_runtime(
        settings.bundle, settings.storage_dir, settings.device, backend=settings.backend, onnx_dir=settings.onnx_dir,
        memory_budget_mb=settings.worker_memory_mb, sampling_caps=settings.sampling_caps,
    )


def _embedded_backend(settings: ServiceSettings) -> tuple[JobStore, JobQueue, Any]:
    store = MemoryJobStore()
    queue = InProcessJobQueue(
        store, partial(_load_embedded_runtime, settings), job_timeout_s=float(settings.job_timeout_s)
    )
    return store, queue, None


def _rq_backend(settings: ServiceSettings) -> tuple[JobStore, JobQueue, Any]:
    from service.queueing.rq_queue import RqJobQueue, connect_redis

    assert settings.redis_url is not None
    connection = connect_redis(settings.redis_url)
    store = RedisJobStore(connection, settings.queue, settings.record_ttl_s)
    queue = RqJobQueue(
        connection,
        settings.queue,
        job_timeout_s=settings.job_timeout_s,
        result_ttl_s=settings.result_ttl_s,
        failure_ttl_s=settings.failure_ttl_s,
    )
    return store, queue, connection


class Reconciler:
    """Reconciles storage with records and the queue: once at start-up, then every ``interval_s``.

    In RQ mode several API replicas share one Redis; a short Redis lock lets one of them do a
    round. Errors (Redis down) are logged and retried next round: the API recovers by itself.
    """

    def __init__(self, jobs: JobService, interval_s: float, lock: object | None) -> None:
        self._jobs = jobs
        self._interval_s = interval_s
        self._lock = lock  # (redis connection, key) or None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        try:
            if self._lock is not None:
                connection, key = self._lock  # type: ignore[misc]
                if not connection.set(key, "1", nx=True, ex=max(1, int(self._interval_s * 0.8))):
                    return
            count = self._jobs.reconcile_storage()
            log.debug("reconciled %d stored jobs", count)
        except Exception as exc:
            log.warning("reconciliation skipped: %s", type(exc).__name__)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="latentseg-reconciler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self.run_once()
        while not self._stop.wait(self._interval_s):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _add_redis_error_handler(app: FastAPI) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return error_response(503, "the job queue (Redis) is unavailable; retry shortly", {"Retry-After": "5"})

    app.add_exception_handler(RedisConnectionError, unavailable)
    app.add_exception_handler(RedisTimeoutError, unavailable)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings if settings is not None else ServiceSettings()
    keyring = Keyring(settings.key_digests())
    check_open_mode(settings, keyring)
    storage = Storage(settings.storage_dir)
    store, queue, connection = _embedded_backend(settings) if settings.embedded else _rq_backend(settings)
    jobs_service = JobService(
        store=store,
        queue=queue,
        storage=storage,
        max_active_per_owner=settings.max_active_jobs_per_key,
        max_queued=settings.max_queued_jobs,
        dedup_ttl_s=settings.record_ttl_s,
    )
    services = Services(
        settings=settings, vocabulary=default_vocabulary(), storage=storage, queue=queue, jobs=jobs_service
    )
    lock = None if connection is None else (connection, f"latentseg:{settings.queue}:reconcile-lock")
    reconciler = Reconciler(jobs_service, settings.reconcile_interval_s, lock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage.ensure()
        if settings.embedded:
            log.warning(
                "embedded mode (no REDIS_URL): jobs run in a worker thread of this process; "
                "accepted jobs are rebuilt from storage on restart"
            )
        else:
            log.info("RQ mode: queue %r", settings.queue)
        queue.start()
        reconciler.start()
        try:
            yield
        finally:
            reconciler.stop()
            queue.stop()

    app = FastAPI(
        title="latentseg",
        summary="Universal CT segmentation with guided latent diffusion: mean and variance masks per target.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by install_api_surface from local Swagger UI files (no CDN)
        redoc_url=None,
    )
    app.add_middleware(
        UploadsInFlight, cap=settings.max_uploads_in_flight_per_key, retry_after_s=settings.retry_after_s
    )
    install_api_surface(app, retry_after_s=settings.retry_after_s)
    app.state.services = services
    app.state.keyring = keyring
    if not settings.embedded:
        _add_redis_error_handler(app)
    for module in (segment, jobs, preview, job_input, targets, health, web):
        app.include_router(module.router)
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory service.main:create_app_from_env``: settings from the environment."""
    return create_app(ServiceSettings())
