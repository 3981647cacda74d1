"""``POST /segment?study_uid=…[&series_uid=…][&push=true]``: a DICOMweb reference instead of an upload.

The API never retrieves pixels: it checks the reference, picks the series when only a study is
given, and queues a job whose payload carries the reference and this server's upload caps; the
worker retrieves the series with WADO-RS (:mod:`worker.dicomweb`).

- ``study_uid`` and ``series_uid``: accepted as they are (no PACS round trip); a series the
  PACS does not have fails the job with ``series not found: …``.
- ``study_uid`` alone: one QIDO-RS query of the study's series, then the documented rule
  (:func:`model.io.dicomweb.choose_ct_series`): the CT series with the most instances. A study
  with no CT series (e.g. only MR), or CT series tied for the most, is refused with 422 naming
  the candidates; an unknown study is 422 too; a source the API cannot reach is 503.
- ``push=true``: after the job finished, the worker stores ``segmentation.dcm`` (BINARY, or
  FRACTIONAL with ``fractional=true``) at the DICOMweb destination; ``GET /jobs/{id}`` reports
  ``push_status`` (``pending``, ``retrying: …``, ``pushed``, ``push_failed: …``) and
  ``pushed_instances``. Push needs a reference (a pushed SEG must reference a series the PACS has).

The request must have no body. Duplicates (same key, same reference, same parameters) are
answered with the live job, as for uploads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from model.io.dicomweb import DicomwebError, DicomwebSettings, choose_ct_series, make_client, search_series
from service.deps import Services
from service.uploads.nifti import VolumeInfo
from worker.contracts import DICOM_INPUT_NAME, SegmentationRequest, new_job_id

__all__ = ["ReferenceParams", "resolve_series", "submit_reference"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class ReferenceParams:
    study_uid: str | None
    series_uid: str | None
    push: bool
    targets: tuple[str, ...]
    ensemble: int | None  # None: the bundle's default (the worker picks it)
    steps: int | None
    seed: int
    dicom: bool | None
    fractional: bool
    largest_component: bool | None
    exclusive: bool | None = None


def _check_uid(name: str, value: str) -> str:
    value = value.strip()
    if len(value) > 64 or not _UID.fullmatch(value):
        raise HTTPException(422, f"{name} must be a DICOM UID (digits and dots, at most 64 characters)")
    return value


def resolve_series(settings: DicomwebSettings, study_uid: str, series_uid: str | None) -> tuple[str, str | None]:
    """(series UID, how it was chosen or None when given). Raises HTTPException 422/503, or
    :class:`~model.io.dicomweb.SeriesChoiceError` (422, naming the candidates)."""
    if series_uid is not None:
        return series_uid, None
    try:
        candidates = search_series(make_client(settings), study_uid)
        chosen = choose_ct_series(study_uid, candidates)
    except DicomwebError as exc:
        if str(exc).startswith("source unreachable"):
            raise HTTPException(503, f"the DICOMweb {exc}") from None
        raise HTTPException(422, str(exc)) from None
    return chosen.series_uid, f"the CT series with the most instances ({chosen.instances})"


def _digest(owner: str, study_uid: str, series_uid: str, params: ReferenceParams, dicom_seg: bool) -> str:
    text = json.dumps([owner, "dicomweb", study_uid, series_uid, list(params.targets), params.ensemble, params.steps,
                       params.seed, [dicom_seg, params.fractional, params.largest_component, params.push, params.exclusive]])
    return hashlib.sha256(text.encode()).hexdigest()


async def submit_reference(
    services: Services, headers: Mapping[str, str], owner: str, params: ReferenceParams
) -> tuple[dict[str, Any], bool]:
    """Queue a job for a DICOMweb reference; returns (record, duplicate)."""
    settings = services.settings
    declared = headers.get("content-length")
    if (declared is not None and declared.strip() not in ("", "0")) or "transfer-encoding" in headers:
        raise HTTPException(422, "study_uid references a series on the DICOMweb source: send no body with it")
    if params.study_uid is None:
        raise HTTPException(422, "series_uid and push=true need study_uid (the study on the DICOMweb source)")
    if params.dicom is False:
        raise HTTPException(422, "a DICOMweb reference always gets segmentation.dcm: dicom=false cannot go with it")
    dicomweb: DicomwebSettings = settings.dicomweb
    if not dicomweb.url:
        raise HTTPException(422, "this server has no DICOMweb source configured (LATENTSEG_DICOMWEB_URL)")
    study_uid = _check_uid("study_uid", params.study_uid)
    given = _check_uid("series_uid", params.series_uid) if params.series_uid is not None else None
    series_uid, rule = await run_in_threadpool(resolve_series, dicomweb, study_uid, given)

    digest = _digest(owner, study_uid, series_uid, params, True)
    duplicate = await run_in_threadpool(services.jobs.find_duplicate, owner, digest)
    if duplicate is not None:
        return duplicate, True
    job_id = new_job_id()
    services.storage.job_dir(job_id).mkdir(parents=True, exist_ok=True)
    try:
        job = SegmentationRequest(
            job_id=job_id, input_name=DICOM_INPUT_NAME, targets=params.targets, ensemble=params.ensemble,
            steps=params.steps, seed=params.seed, dicom_seg=True, fractional=params.fractional,
            largest_component=params.largest_component, exclusive=params.exclusive, push=params.push,
            source={
                "study_uid": study_uid, "series_uid": series_uid, "max_bytes": settings.max_upload_bytes,
                "max_files": settings.max_dicom_files, "max_voxels": settings.max_voxels,
            },
        )
        unknown = VolumeInfo(shape=(0, 0, 0), spacing=(0.0, 0.0, 0.0), dtype="unknown")
        outcome = await run_in_threadpool(services.jobs.submit, job, unknown, owner, digest)
        if not outcome.duplicate:
            source = {"study_uid": study_uid, "series_uid": series_uid, **({"chosen_by": rule} if rule else {})}
            # the worker writes only push_* and lifecycle fields: no race with these two
            await run_in_threadpool(services.jobs.store.update, job_id, {"input_format": "dicomweb", "source": source})
    except BaseException:  # an AdmissionRefused answers 429 by itself
        services.storage.delete_job(job_id)
        raise
    record = dict(outcome.record)
    return record, outcome.duplicate
