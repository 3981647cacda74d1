"""The FastAPI application: ``create_app(settings)``.

With ``REDIS_URL`` set, jobs go to RQ workers (``latentseg worker``); without it the app runs in
embedded mode with an in-process worker thread running the same job function. Building the app
never imports torch; in embedded mode the worker thread imports it when the app starts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from model.vocabulary import default_vocabulary
from service.deps import Services
from service.jobs import JobService, JobStore, MemoryJobStore, RedisJobStore
from service.queues import InProcessJobQueue, JobQueue
from service.routes import health, jobs, segment, targets
from service.settings import ServiceSettings
from service.storage import Storage

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger(__name__)


def _load_embedded_runtime(settings: ServiceSettings) -> WorkerRuntime:
    """Runs in the embedded worker thread: the only place the API process imports torch."""
    from worker.runtime import load_runtime

    return load_runtime(settings.bundle, settings.storage_dir, settings.device)


def _embedded_backend(settings: ServiceSettings) -> tuple[JobStore, JobQueue]:
    store = MemoryJobStore()
    return store, InProcessJobQueue(store.update, partial(_load_embedded_runtime, settings))


def _rq_backend(settings: ServiceSettings) -> tuple[JobStore, JobQueue]:
    from service.rq_queue import RqJobQueue, connect_redis

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
    return store, queue


def _add_redis_error_handler(app: FastAPI) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return JSONResponse(
            {"detail": "the job queue (Redis) is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    app.add_exception_handler(RedisConnectionError, unavailable)
    app.add_exception_handler(RedisTimeoutError, unavailable)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings if settings is not None else ServiceSettings()
    storage = Storage(settings.storage_dir)
    store, queue = _embedded_backend(settings) if settings.embedded else _rq_backend(settings)
    services = Services(
        settings=settings,
        vocabulary=default_vocabulary(),
        storage=storage,
        queue=queue,
        jobs=JobService(store=store, queue=queue, storage=storage),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage.ensure()
        if settings.embedded:
            log.warning(
                "embedded mode (no REDIS_URL): jobs run in a worker thread of this process; "
                "job state is lost on restart and there is no job timeout"
            )
        else:
            log.info("RQ mode: queue %r", settings.queue)
        queue.start()
        try:
            yield
        finally:
            queue.stop()

    app = FastAPI(
        title="latentseg",
        summary="Universal CT segmentation with guided latent diffusion: mean and variance masks per target.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.services = services
    if not settings.embedded:
        _add_redis_error_handler(app)
    for module in (segment, jobs, targets, health):
        app.include_router(module.router)
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory service.main:create_app_from_env``: settings from the environment."""
    return create_app(ServiceSettings())
