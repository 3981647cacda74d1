"""``GET /jobs/{job_id}/input``: the job's stored input volume (NIfTI), for the web page's viewer to
draw the masks on the CT they came from.

Served as a file: HTTP range requests get 206 partial content (Starlette's ``FileResponse``), so a
viewer can stream or resume a large volume. The stored input is the upload made canonical
(``input.nii``, uncompressed) or kept gzipped (``input.nii.gz``); DICOM jobs keep a zip of the series
that a NIfTI viewer cannot read: 415, and the viewer draws the maps on their own grid instead. Same
ownership rules as the other job routes: another key's job is a 404.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from service.auth import CallerDep
from service.deps import ServicesDep, owned_job
from worker.contracts import DICOM_INPUT_NAME

__all__ = ["router"]

router = APIRouter(tags=["jobs"])


@router.get(
    "/jobs/{job_id}/input",
    name="get_job_input",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}, "application/gzip": {}}, "description": "the NIfTI input"},
        206: {"description": "the requested byte range of it"},
        404: {"description": "no such job (for this key)"},
        410: {"description": "the input is no longer stored"},
        415: {"description": "a DICOM job: its input is a DICOM series, not NIfTI"},
    },
)
def get_job_input(services: ServicesDep, owner: CallerDep, job_id: str) -> FileResponse:
    record = owned_job(services, job_id, owner)
    path = services.storage.input_path(job_id)
    if path is None:
        raise HTTPException(410, f"the input of job {job_id} is no longer stored")
    if path.name == DICOM_INPUT_NAME:
        raise HTTPException(415, f"job {job_id} has a DICOM series as input, not a NIfTI volume")
    gzipped = path.name.endswith(".gz")
    return FileResponse(
        path,
        media_type="application/gzip" if gzipped else "application/octet-stream",
        filename=f"{job_id}-{path.name}",
        headers={"Cache-Control": "private, max-age=3600"},
    )
