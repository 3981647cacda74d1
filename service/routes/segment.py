"""``POST /segment``: upload a volume (multipart file or raw body) for one or more targets.

The upload is a NIfTI volume (``.nii``/``.nii.gz``) or a ``.zip`` of one DICOM CT series; its
bytes decide which (a zip starts with ``PK``), never a filename. Either is validated in the
sandbox subprocess before anything is queued (:mod:`service.uploads.nifti`, :mod:`service.uploads.dicom_upload`).

Outputs besides the NIfTI masks: ``dicom=true`` adds ``segmentation.dcm``, a BINARY DICOM-SEG
with one segment per target (SNOMED CT codes); it is the default for DICOM input (the SEG
references the uploaded series) and off for NIfTI input (when asked for, the SEG references a CT
series derived from the volume, delivered as ``dicom_ct.zip``). ``fractional=true`` makes the
SEG FRACTIONAL (each target's mean probability) and implies ``dicom=true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from model.bundle.manifest import check_sampling
from model.errors import UserError
from service.auth import CallerDep
from service.deps import Services, ServicesDep
from service.uploads.nifti import UploadLimits, UploadRejected, VolumeInfo
from service.uploads.dicom_upload import is_zip_upload
from service.prompt_targets import PromptLimits, resolve_request_targets
from service.schemas import SubmitResponse
from service.served import served_targets, unserved_problem
from service.settings import ServiceSettings
from service.slow_clients import UploadStalled, deadline_receive
from service.queueing.storage import RawUpload, UploadTooLarge
from service.uploads.upload_sandbox import SandboxLimits, check_upload
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
        "description": "The CT volume (.nii or .nii.gz) or a .zip of one DICOM CT series: a multipart field "
        "named `file`, or the raw body.",
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


def _request_digest(
    owner: str, sha256: str, targets: tuple[str, ...], ensemble: int | None, steps: int | None, seed: int,
    outputs: tuple[bool | None, ...],
) -> str:
    """Same key, same bytes, same parameters -> same digest (duplicate submissions do the work once)."""
    text = json.dumps([owner, sha256, list(targets), ensemble, steps, seed, list(outputs)])
    return hashlib.sha256(text.encode()).hexdigest()


def _accepted(request: Request, response: Response, record: dict[str, Any], duplicate: bool) -> SubmitResponse:
    status_url = str(request.url_for("get_job", job_id=record["job_id"]).path)
    response.headers["Location"] = status_url
    if duplicate:
        response.status_code = 200
    return SubmitResponse(
        job_id=record["job_id"], status=record["status"], status_url=status_url,
        targets=list(record["targets"]), duplicate=duplicate,
    )


@router.post(
    "/segment",
    status_code=202,
    response_model=SubmitResponse,
    openapi_extra=_BODY_DOC,
    responses={
        200: {"description": "a duplicate: this key already submitted the same upload with the same parameters"},
        400: {"description": "a malformed multipart body"},
        401: {"description": "missing or invalid API key"},
        408: {"description": "the upload stalled or took longer than the server's deadline"},
        413: {"description": "too large (compressed, decompressed, voxels, or zip members; or an estimated peak "
                             "memory over every live worker's LATENTSEG_WORKER_MEMORY_MB)"},
        415: {"description": "neither a NIfTI nor a zip of DICOM images"},
        422: {"description": "invalid parameters, a target the deployed bundle(s) do not serve (GET /targets: "
                             "`served`), a malformed NIfTI, or a DICOM zip that is not one usable series "
                             "(a single slice, several series, gantry tilt, uneven spacing...)"},
        429: {"description": "too many active jobs or uploads in flight for this key, or the queue is full "
                             "(see Retry-After)"},
        503: {"description": "the job queue is unavailable, or (LATENTSEG_REQUIRE_WORKER_BUNDLE) no worker has "
                             "published its bundle yet"},
        507: {"description": "storage full: nothing was kept (see Retry-After)"},
    },
)
async def submit_segmentation(
    request: Request,
    response: Response,
    services: ServicesDep,
    owner: CallerDep,
    targets: Annotated[str, Query(description="comma-separated target names, synonyms or plain words, "
                                              "e.g. liver,pancreas or 'left kidney, pancreatic tumour'")],
    ensemble: Annotated[int | None, Query(ge=1, description="ensemble size (samples per target); default: the "
                                                           "bundle's, at most LATENTSEG_MAX_ENSEMBLE")] = None,
    steps: Annotated[int | None, Query(ge=1, description="sampling steps; default: the bundle's, at most "
                                                        "LATENTSEG_MAX_STEPS")] = None,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    dicom: Annotated[bool | None, Query(description="also write segmentation.dcm, a DICOM-SEG (default: true for "
                                                    "a DICOM zip, false for NIfTI; NIfTI input then also gets "
                                                    "dicom_ct.zip, the derived CT series the SEG references)")] = None,
    fractional: Annotated[bool, Query(description="make segmentation.dcm FRACTIONAL (mean probability) instead of "
                                                  "BINARY; implies dicom=true")] = False,
    largest_component: Annotated[bool | None, Query(description="keep only the largest connected piece of one-piece "
                                                               "organs (GET /targets: `connected`); default: the "
                                                               "model's")] = None,
    exclusive: Annotated[bool | None, Query(description="one-piece organs requested together never share a voxel: "
                                                       "where they compete the most probable keeps it; default: the "
                                                       "model's")] = None,
    study_uid: Annotated[str | None, Query(description="instead of a body: segment a series of this study on the "
                                                       "DICOMweb source (service.uploads.dicomweb_ref)")] = None,
    series_uid: Annotated[str | None, Query(description="the series (default: the study's CT series with the most "
                                                        "instances; ambiguous or no CT: 422)")] = None,
    push: Annotated[bool, Query(description="store segmentation.dcm in the PACS (STOW-RS) when the job finished; "
                                            "needs study_uid")] = False,
) -> SubmitResponse:
    if fractional and dicom is False:
        raise HTTPException(422, "fractional=true describes the DICOM-SEG output; it cannot go with dicom=false")
    await _admit(services, owner)  # first: a refused caller costs no prompt resolution
    names = await _served_target_names(request, services, targets)
    check_sampling(ensemble, steps, services.settings.sampling_caps)  # a SamplingRangeError is 422; None: the bundle's
    params = _Parameters(names, ensemble, steps, seed, dicom, fractional, largest_component, exclusive)
    if study_uid is not None or series_uid is not None or push:  # a DICOMweb reference, no upload
        from service.uploads.dicomweb_ref import ReferenceParams, submit_reference

        record, duplicate = await submit_reference(services, request.headers, owner, ReferenceParams(
            study_uid, series_uid, push, names, ensemble, steps, seed, dicom, fractional, largest_component, exclusive,
        ))
        return _accepted(request, response, record, duplicate)
    job_id = new_job_id()
    raw = await _store_upload(request, services, job_id)
    record, duplicate = await _check_and_enqueue(services, owner, job_id, raw, params)
    return _accepted(request, response, record, duplicate)


@dataclass(frozen=True)
class _Parameters:
    """A request's checked parameters, its targets resolved to vocabulary names."""

    targets: tuple[str, ...]
    ensemble: int | None
    steps: int | None
    seed: int
    dicom: bool | None
    fractional: bool
    largest_component: bool | None
    exclusive: bool | None

    def dicom_seg(self, is_dicom: bool) -> bool:
        """Whether segmentation.dcm is written: asked for (fractional implies it), else for DICOM input."""
        return self.fractional or (is_dicom if self.dicom is None else self.dicom)


async def _admit(services: Services, owner: str) -> None:
    """429 when the key or the queue is over its admission limit (an AdmissionRefused answers itself)."""
    await run_in_threadpool(services.jobs.check_admission, owner)


async def _served_target_names(request: Request, services: Services, targets: str) -> tuple[str, ...]:
    """The vocabulary names of ``targets`` (names, synonyms or plain words, length-capped first:
    service.prompt_targets), all served (422 naming the unserved; 503 while RQ workers' bundles are
    unknown and LATENTSEG_REQUIRE_WORKER_BUNDLE is set), checked before anything is read or queued."""
    settings = services.settings
    try:
        resolved = await run_in_threadpool(
            resolve_request_targets, request.app, services.vocabulary, targets, PromptLimits.from_settings(settings)
        )
    except UserError:  # answers itself (model.errors): an unknown target names the valid ones
        raise
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    names = tuple(t.name for t in resolved)
    served = await run_in_threadpool(served_targets, services)
    if (problem := unserved_problem(served, names)) is not None:
        known = served.served or frozenset()
        raise HTTPException(422, {"message": problem, "unserved": [n for n in names if n not in known],
                                  "served": [t.name for t in services.vocabulary.targets if t.name in known]})
    if served.served is None and settings.require_worker_bundle and not settings.embedded:
        raise HTTPException(503, f"{served.why_unknown}: the served targets are unknown until a worker starts",
                            {"Retry-After": str(settings.retry_after_s)})
    return names


async def _store_upload(request: Request, services: Services, job_id: str) -> RawUpload:
    """Stream the body (a multipart ``file`` field or the raw body) into the job's storage, under the
    size limit (413), the client's deadlines (408) and a well-formed multipart (400); nothing is
    kept on failure."""
    settings = services.settings
    limit = settings.max_upload_bytes
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    body_limit = limit + (MULTIPART_SLACK_BYTES if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise _too_large(limit)

    receive = deadline_receive(request.receive, settings.body_idle_timeout_s, settings.upload_deadline_s)
    limited = Request(request.scope, receive=_limited(receive, body_limit))
    try:
        if multipart:
            async with limited.form(max_files=1, max_fields=8, max_part_size=64 * 1024) as form:
                uploads = [v for v in form.values() if isinstance(v, UploadFile)]
                if not uploads:
                    raise HTTPException(422, "the multipart body has no file field; send the volume as `file`")
                return await services.storage.save_upload(job_id, _iter_upload(uploads[0]), limit)
        return await services.storage.save_upload(job_id, limited.stream(), limit)
    except UploadTooLarge as exc:
        services.storage.delete_job(job_id)
        raise _too_large(limit) from exc
    except ClientDisconnect:
        services.storage.delete_job(job_id)
        raise HTTPException(400, "the upload was interrupted") from None
    except UploadStalled:  # a slow or stalled client: 408, then the connection closes (its class says so)
        services.storage.delete_job(job_id)
        raise
    except MultiPartException as exc:
        services.storage.delete_job(job_id)
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    except StarletteHTTPException as exc:  # Starlette's form parser reports a malformed body as 400
        services.storage.delete_job(job_id)
        if exc.status_code == 400:
            raise HTTPException(400, f"malformed multipart body: {exc.detail}") from None
        raise


async def _check_and_enqueue(
    services: Services, owner: str, job_id: str, raw: RawUpload, params: _Parameters
) -> tuple[dict[str, Any], bool]:
    """The job's record and whether it is a duplicate: a live job of this key with the same bytes and
    parameters, else the upload validated in the sandbox, then recorded and queued. On any refusal
    the job's storage is deleted."""
    is_dicom = is_zip_upload(raw.path)
    dicom_seg = params.dicom_seg(is_dicom)
    digest = _request_digest(owner, raw.sha256, params.targets, params.ensemble, params.steps, params.seed,
                             (dicom_seg, params.fractional, params.largest_component, params.exclusive))
    try:
        duplicate = await run_in_threadpool(services.jobs.find_duplicate, owner, digest)
        if duplicate is not None:
            services.storage.delete_job(job_id)
            log.info("job %s: duplicate submission, answered with the existing job", duplicate["job_id"])
            return duplicate, True
        stored = services.storage.canonical_input(job_id, dicom=is_dicom)
        volume = await _validate_upload(services.settings, raw, stored, job_id, is_dicom)
        job = SegmentationRequest(
            job_id=job_id, input_name=stored.name, targets=params.targets, ensemble=params.ensemble,
            steps=params.steps, seed=params.seed, dicom_seg=dicom_seg, fractional=params.fractional,
            largest_component=params.largest_component, exclusive=params.exclusive,
        )
        outcome = await run_in_threadpool(services.jobs.submit, job, volume, owner, digest)
    except BaseException:  # AdmissionRefused (429) and TooLargeForWorkers (413) answer themselves
        services.storage.delete_job(job_id)
        raise
    if not outcome.duplicate:
        log.info("job %s: queued (%s)", job_id, ",".join(job.targets))
    return outcome.record, outcome.duplicate


async def _validate_upload(
    settings: ServiceSettings, raw: RawUpload, stored: Path, job_id: str, is_dicom: bool
) -> VolumeInfo:
    """Check the upload in the sandbox subprocess (service.uploads.upload_sandbox) into its canonical name
    ``stored``; the raw upload is removed either way. Refusals answer with their status."""
    limits = UploadLimits(
        max_voxels=settings.max_voxels,
        max_decompressed_bytes=settings.max_decompressed_bytes,
        reject_nonfinite=settings.reject_nonfinite,
        max_dicom_files=settings.max_dicom_files,
    )
    sandbox = SandboxLimits(
        timeout_s=settings.upload_check_timeout_s,
        memory_bytes=settings.upload_check_memory_bytes,
        cpu_s=settings.upload_check_cpu_s,
    )
    try:
        return await check_upload(raw.path, stored, limits, sandbox, kind="dicom_zip" if is_dicom else "nifti")
    except UploadRejected as exc:
        if is_dicom:  # the message may quote member names or a series description: not for logs
            log.info("upload for job %s refused (%d): DICOM zip, %s", job_id, exc.status, type(exc).__name__)
        else:  # NIfTI messages are numbers and never quote header text (service.uploads.nifti)
            log.info("upload for job %s refused (%d): %s", job_id, exc.status, exc)
        raise
    finally:
        raw.path.unlink(missing_ok=True)
