"""``GET /jobs/{job_id}/preview.png``: a picture of a finished job (model.io.preview).

Drawn on first request from the stored input and the job's result files, then cached as
``jobs/<job_id>/preview.png`` beside (not inside) ``results/``, so the result listing and
archive stay what the worker wrote; deleting the job deletes the picture. A worker that
already wrote ``preview.png`` into the results is served as is (workers do for DICOM input). Same ownership rules as the
other job routes: another key's job is a 404.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from service.auth import CallerDep
from service.deps import ServicesDep, owned_job
from worker.contracts import DICOM_INPUT_NAME, JobState

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])

PREVIEW_NAME = "preview.png"


def _render(services: ServicesDep, job_id: str, cached: Path, requested: list[str]) -> None:
    from model.io.preview import render_preview_files

    results = {f.name: f.path for f in services.storage.results(job_id)}
    input_path = services.storage.input_path(job_id)
    if not results or input_path is None or "labels.json" not in results:
        raise HTTPException(410, f"the input or results of job {job_id} are no longer stored")
    if input_path.name == DICOM_INPUT_NAME:  # the worker draws DICOM jobs' pictures; this one has none
        raise HTTPException(410, f"job {job_id} has no picture (its worker wrote none)")
    written = set(json.loads(results["labels.json"].read_text()).values())
    # The request's order, so colours match `latentseg segment --preview` for the same targets.
    names = [n for n in requested if n in written] or sorted(written)
    targets = [services.vocabulary.get(name) for name in names]
    preview = render_preview_files(input_path, results["labels.json"].parent, targets)
    partial = cached.with_name(f".{PREVIEW_NAME}.{secrets.token_hex(4)}")
    preview.image.save(partial, format="PNG", optimize=True)
    os.replace(partial, cached)


@router.get(
    "/jobs/{job_id}/preview.png",
    name="get_preview",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "axial slices with contours, variance and a legend"},
        404: {"description": "no such job (for this key)"},
        409: {"description": "the job has not finished"},
        410: {"description": "the job's files are no longer stored"},
    },
)
def get_preview(services: ServicesDep, owner: CallerDep, job_id: str) -> FileResponse:
    record = owned_job(services, job_id, owner)
    if record["status"] != JobState.FINISHED.value:
        raise HTTPException(409, f"job {job_id} has no picture: it is {record['status']}")
    written = services.storage.result(job_id, PREVIEW_NAME)
    if written is not None:
        return FileResponse(written.path, media_type="image/png")
    cached = services.storage.job_dir(job_id) / PREVIEW_NAME
    if not cached.is_file():
        _render(services, job_id, cached, list(record.get("targets") or []))
        log.info("job %s: preview drawn", job_id)
    return FileResponse(cached, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
