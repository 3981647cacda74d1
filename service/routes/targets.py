"""``GET /targets``: the vocabulary with synonyms and codes (the single source of truth, torch-free).

The same rows as ``latentseg targets --json`` (id, name, display, kind, synonyms, snomed), plus
the SEG's property category, the laterality side, and whether the deployed bundle(s) serve each
target (``served``, ``served_reason``; :mod:`service.served`).
"""

from __future__ import annotations

from fastapi import APIRouter

from model.targets.vocabulary import Code
from service.deps import ServicesDep
from service.schemas import CodeOut, TargetList, TargetOut
from service.served import served_targets

__all__ = ["router"]

router = APIRouter(tags=["targets"])


def _code(code: Code) -> CodeOut:
    return CodeOut(value=code.value, scheme=code.scheme, meaning=code.meaning)


@router.get("/targets", response_model=TargetList)
def list_targets(services: ServicesDep) -> TargetList:
    vocabulary = services.vocabulary
    state = served_targets(services)
    return TargetList(
        targets=[
            TargetOut(
                id=t.id, name=t.name, display=t.display, kind=str(t.kind), synonyms=list(t.synonyms),
                snomed=None if t.code is None else _code(t.code), category=_code(t.category), side=t.side,
                connected=t.connected,
                served=(t.name in state.served) if state.served is not None else None,
                served_reason=state.reason(t.name),
            )
            for t in vocabulary.targets
        ],
        vocabulary_sha256=vocabulary.sha256(),
        served_targets=[t.name for t in vocabulary.targets if t.name in state.served] if state.served is not None
        else None,
        served_note=state.why_unknown,
        bundles=[{k: str(v) for k, v in b.items()} for b in state.bundles],
    )
