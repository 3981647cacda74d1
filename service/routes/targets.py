"""``GET /targets``: the vocabulary with synonyms and codes (the single source of truth, torch-free).

The same rows as ``latentseg targets --json`` (id, name, display, kind, synonyms, snomed), plus
the SEG's property category and the laterality side.
"""

from __future__ import annotations

from fastapi import APIRouter

from model.vocabulary import Code
from service.deps import ServicesDep
from service.schemas import CodeOut, TargetList, TargetOut

__all__ = ["router"]

router = APIRouter(tags=["targets"])


def _code(code: Code) -> CodeOut:
    return CodeOut(value=code.value, scheme=code.scheme, meaning=code.meaning)


@router.get("/targets", response_model=TargetList)
def list_targets(services: ServicesDep) -> TargetList:
    vocabulary = services.vocabulary
    return TargetList(
        targets=[
            TargetOut(
                id=t.id, name=t.name, display=t.display, kind=str(t.kind), synonyms=list(t.synonyms),
                snomed=None if t.code is None else _code(t.code), category=_code(t.category), side=t.side,
                connected=t.connected,
            )
            for t in vocabulary.targets
        ],
        vocabulary_sha256=vocabulary.sha256(),
    )
