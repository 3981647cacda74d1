"""``POST /segment``: upload a volume (multipart file or raw body) for one or more targets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from model.vocabulary import UnknownTargetError
from service.deps import ServicesDep
from service.nifti import MalformedNifti, NotNifti, check_nifti_header
from service.schemas import SubmitResponse
from service.storage import UploadTooLarge
from worker.contracts import SegmentationRequest, new_job_id

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter(tags=["segmentation"])

# Room for multipart boundaries and part headers on top of the file itself.
MULTIPART_SLACK_BYTES = 64 * 1024
CHUNK_BYTES = 1024 * 1024

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The CT volume (.nii or .nii.gz): a multipart field named `file`, or the raw body.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _limited(receive: Receive, limit: int) -> Receive:
    """Wrap an ASGI ``receive`` so the request body stops at ``limit`` bytes, Content-Length or not."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise UploadTooLarge(limit)
        return message

    return wrapped


async def _iter_upload(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the upload is larger than this server's limit of {limit} bytes")


@router.post(
    "/segment",
    status_code=202,
    response_model=SubmitResponse,
    openapi_extra=_BODY_DOC,
    responses={413: {"description": "too large"}, 415: {"description": "not a NIfTI"}, 422: {"description": "invalid"}},
)
async def submit_segmentation(
    request: Request,
    response: Response,
    services: ServicesDep,
    targets: Annotated[str, Query(description="comma-separated target names or synonyms, e.g. liver,pancreas")],
    ensemble: Annotated[int | None, Query(ge=1, description="ensemble size (samples per target)")] = None,
    steps: Annotated[int | None, Query(ge=1, description="sampling steps")] = None,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> SubmitResponse:
    settings = services.settings
    try:
        resolved = services.vocabulary.resolve(targets)
    except UnknownTargetError as exc:
        raise HTTPException(422, {"message": str(exc), "unknown": list(exc.unknown), "valid": list(exc.valid)}) from exc
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    ensemble = settings.default_ensemble if ensemble is None else ensemble
    steps = settings.default_steps if steps is None else steps
    if ensemble > settings.max_ensemble:
        raise HTTPException(422, f"ensemble must be at most {settings.max_ensemble}")
    if steps > settings.max_steps:
        raise HTTPException(422, f"steps must be at most {settings.max_steps}")

    limit = settings.max_upload_bytes
    content_type = request.headers.get("content-type", "")
    multipart = content_type.startswith("multipart/form-data")
    body_limit = limit + (MULTIPART_SLACK_BYTES if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise _too_large(limit)

    job_id = new_job_id()
    limited = Request(request.scope, receive=_limited(request.receive, body_limit))
    try:
        if multipart:
            async with limited.form(max_files=1, max_fields=8) as form:
                uploads = [v for v in form.values() if isinstance(v, UploadFile)]
                if not uploads:
                    raise HTTPException(422, "the multipart body has no file field; send the volume as `file`")
                stored = await services.storage.save_upload(job_id, _iter_upload(uploads[0]), limit)
        else:
            stored = await services.storage.save_upload(job_id, limited.stream(), limit)
    except UploadTooLarge as exc:
        services.storage.delete_job(job_id)
        raise _too_large(limit) from exc

    try:
        volume = await run_in_threadpool(check_nifti_header, stored, max_voxels=settings.max_voxels)
    except NotNifti as exc:
        services.storage.delete_job(job_id)
        raise HTTPException(415, str(exc)) from exc
    except MalformedNifti as exc:
        services.storage.delete_job(job_id)
        raise HTTPException(422, str(exc)) from exc

    job = SegmentationRequest(
        job_id=job_id,
        input_name=stored.name,
        targets=tuple(t.name for t in resolved),
        ensemble=ensemble,
        steps=steps,
        seed=seed,
    )
    try:
        await run_in_threadpool(services.jobs.submit, job, volume)
    except BaseException:
        services.storage.delete_job(job_id)
        raise
    log.info("job %s: queued (%s)", job_id, ",".join(job.targets))
    status_url = str(request.url_for("get_job", job_id=job_id).path)
    response.headers["Location"] = status_url
    return SubmitResponse(job_id=job_id, status="queued", status_url=status_url, targets=list(job.targets))
