"""Typed FastAPI dependencies: everything a route needs comes from ``app.state.services``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from model.targets.vocabulary import Vocabulary
from service.jobs import JobService
from service.queues import JobQueue
from service.settings import ServiceSettings
from service.storage import Storage

__all__ = ["Services", "ServicesDep", "get_services"]


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
