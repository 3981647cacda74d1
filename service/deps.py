"""Typed FastAPI dependencies: everything a route needs comes from ``app.state.services``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from model.targets.vocabulary import Vocabulary
from service.queueing.jobs import JobService
from service.queueing.queues import JobQueue
from service.settings import ServiceSettings
from service.queueing.storage import Storage
from worker.contracts import is_job_id

__all__ = ["Services", "ServicesDep", "get_services", "owned_job"]


@dataclass(frozen=True)
class Services:
    settings: ServiceSettings
    vocabulary: Vocabulary
    storage: Storage
    queue: JobQueue
    jobs: JobService


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


def owned_job(services: Services, job_id: str, owner: str) -> dict[str, Any]:
    """The caller's job record, else 404 (another key's job is indistinguishable from a missing one)."""
    record = services.jobs.get_owned(job_id, owner) if is_job_id(job_id) else None
    if record is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return record
