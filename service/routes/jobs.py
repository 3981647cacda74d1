"""Job status (one or many), results (manifest, files, zip archive) and deletion."""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from service.auth import CallerDep
from service.deps import ServicesDep, owned_job
from service.queueing.jobs import DeleteOutcome
from service.schemas import JobList, JobStatus, ResultFileOut, ResultManifest
from worker.contracts import JobState, is_job_id

__all__ = ["router"]

router = APIRouter(tags=["jobs"])
MAX_BATCH_IDS = 500
STATISTICS_FILE = "statistics.json"  # model.inference.statistics.STATISTICS_FILE (the API does not import model.inference.statistics)
MEDIA_TYPES = (
    (".json", "application/json"),
    (".gz", "application/gzip"),
    (".dcm", "application/dicom"),
    (".zip", "application/zip"),
    (".png", "image/png"),
)


def _not_found(job_id: str) -> HTTPException:
    return HTTPException(404, f"no job {job_id!r}")


def _status(request: Request, record: dict[str, Any]) -> JobStatus:
    results_url = str(request.url_for("get_results", job_id=record["job_id"]).path)
    return JobStatus.from_record(record, results_url)




@router.get("/jobs", response_model=JobList)
def list_jobs(
    request: Request,
    services: ServicesDep,
    owner: CallerDep,
    ids: Annotated[str, Query(description="comma-separated job ids (batch polling)")],
) -> JobList:
    wanted = list(dict.fromkeys(part.strip() for part in ids.split(",") if part.strip()))
    if len(wanted) > MAX_BATCH_IDS:
        raise HTTPException(422, f"at most {MAX_BATCH_IDS} ids per request")
    valid = [i for i in wanted if is_job_id(i)]
    records = services.jobs.get_many(valid) if valid else []
    found = {r["job_id"]: r for r in records if r is not None and r.get("owner") == owner}
    return JobList(
        jobs=[_status(request, found[i]) for i in valid if i in found],
        missing=[i for i in wanted if i not in found],
    )


@router.get("/jobs/{job_id}", response_model=JobStatus, name="get_job")
def get_job(request: Request, services: ServicesDep, owner: CallerDep, job_id: str) -> JobStatus:
    return _status(request, owned_job(services, job_id, owner))


@router.delete(
    "/jobs/{job_id}",
    responses={
        200: {"model": JobStatus, "description": "a queued job, now canceled"},
        202: {"model": JobStatus, "description": "a running job: cancellation requested, it ends canceled"},
        204: {"description": "an ended job: its data and record are deleted"},
    },
)
def delete_job(request: Request, services: ServicesDep, owner: CallerDep, job_id: str) -> Any:
    if not is_job_id(job_id):
        raise _not_found(job_id)
    outcome = services.jobs.delete(job_id, owner)
    if outcome is DeleteOutcome.MISSING:
        raise _not_found(job_id)
    if outcome is DeleteOutcome.CANCEL_REQUESTED:
        body = _status(request, owned_job(services, job_id, owner))
        return JSONResponse(body.model_dump(mode="json"), status_code=202)
    if outcome is DeleteOutcome.CANCELED:
        return _status(request, owned_job(services, job_id, owner))
    return Response(status_code=204)


def _finished(services: ServicesDep, job_id: str, owner: str) -> dict[str, Any]:
    record = owned_job(services, job_id, owner)
    if record["status"] != JobState.FINISHED.value:
        raise HTTPException(409, f"job {job_id} has no results: it is {record['status']}")
    return record


@router.get("/jobs/{job_id}/results", response_model=ResultManifest, name="get_results")
def get_results(request: Request, services: ServicesDep, owner: CallerDep, job_id: str) -> ResultManifest:
    record = _finished(services, job_id, owner)
    files = services.storage.results(job_id)
    if not files:
        raise HTTPException(410, f"the results of job {job_id} are no longer stored")
    return ResultManifest(
        job_id=job_id,
        files=[
            ResultFileOut(
                name=f.name, size=f.size, url=str(request.url_for("get_result_file", job_id=job_id, name=f.name).path)
            )
            for f in files
        ],
        archive_url=str(request.url_for("get_results_archive", job_id=job_id).path),
        bundle=record.get("bundle"),
    )


@router.get(
    "/jobs/{job_id}/statistics",
    name="get_statistics",
    responses={
        200: {"description": "the job's statistics.json: per target volume (ml) with the ensemble's spread, HU, "
                             "bounding box (RAS and LPS mm), components, edge contact, needs_review and its reason "
                             "(schema: docs/statistics.md)"},
        404: {"description": "no such job, or a job written before statistics existed"},
        409: {"description": "the job has not finished"},
    },
)
def get_statistics(services: ServicesDep, owner: CallerDep, job_id: str) -> JSONResponse:
    _finished(services, job_id, owner)
    item = services.storage.result(job_id, STATISTICS_FILE)
    if item is None:
        raise HTTPException(404, f"job {job_id} has no statistics (it finished before they were written)")
    try:
        document = json.loads(item.path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HTTPException(500, f"the statistics of job {job_id} could not be read") from exc
    return JSONResponse(document)


@router.get("/jobs/{job_id}/results.zip", name="get_results_archive", response_class=StreamingResponse)
def get_results_archive(services: ServicesDep, owner: CallerDep, job_id: str) -> StreamingResponse:
    _finished(services, job_id, owner)
    files = services.storage.results(job_id)
    if not files:
        raise HTTPException(410, f"the results of job {job_id} are no longer stored")
    spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)
    # The NIfTI outputs are already gzip-compressed: store them.
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED) as archive:
        for f in files:
            archive.write(f.path, arcname=f"{job_id}/{f.name}")
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        with spool:
            while chunk := spool.read(1024 * 1024):
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'},
    )


@router.get("/jobs/{job_id}/results/{name}", name="get_result_file", response_class=FileResponse)
def get_result_file(services: ServicesDep, owner: CallerDep, job_id: str, name: str) -> FileResponse:
    _finished(services, job_id, owner)
    item = services.storage.result(job_id, name)
    if item is None:
        raise HTTPException(404, f"job {job_id} has no result named {name!r}")
    return FileResponse(item.path, media_type=_media_type(name), filename=name)


def _media_type(name: str) -> str:
    for suffix, media in MEDIA_TYPES:
        if name.endswith(suffix):
            return media
    return "application/octet-stream"
