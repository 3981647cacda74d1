"""``GET /targets``: the vocabulary with synonyms (the single source of truth, torch-free)."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ServicesDep
from service.schemas import TargetList, TargetOut

__all__ = ["router"]

router = APIRouter(tags=["targets"])


@router.get("/targets", response_model=TargetList)
def list_targets(services: ServicesDep) -> TargetList:
    return TargetList(
        targets=[
            TargetOut(name=t.name, display=t.display, kind=str(t.kind), synonyms=list(t.synonyms))
            for t in services.vocabulary
        ]
    )
