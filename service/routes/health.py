"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can do work)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import ServicesDep
from service.schemas import Health, ReadyStatus

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=ReadyStatus, responses={503: {"model": ReadyStatus}})
def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the queue backend is reachable, a worker is live, and a bundle is known."""
    state = services.queue.readiness()
    body = ReadyStatus(
        ready=state.ready, mode=state.mode, workers=state.workers, bundle=state.bundle, bundles=state.bundles,
        problems=state.problems
    )
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)
