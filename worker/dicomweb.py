"""The worker's side of DICOMweb: retrieve a referenced series before a job, push its SEG after.

Retrieval (:func:`fetch_source`): the job's ``source`` names a study and series; WADO-RS
streams it into the job's ``input.zip`` (one instance in memory at a time) under the caps the
API put in the payload (its upload limits: bytes, instances, voxels), then the series is
checked like an uploaded one (one CT series, consistent geometry) before the usual pipeline
runs. Failures are the job's failure reason: ``source unreachable: …``, ``series not found: …``,
``retrieval too large: …``, ``invalid input: …``.

Push (:func:`push_results`): after the job finished (results are on disk and stay there
whatever happens), ``segmentation.dcm`` is stored with STOW-RS at the destination
(``LATENTSEG_DICOMWEB_PUSH_URL``, default the source); with ``LATENTSEG_DICOMWEB_PUSH_UNCERTAINTY``
also ``probability.dcm`` and the ``{target}_variance.dcm`` Parametric Maps. A failed attempt is retried with
exponential backoff (``push_attempts``, ``push_backoff_s`` doubling up to
``push_max_backoff_s``). The record says where it stands: ``push_status`` = ``pending``,
``retrying: reason`` (after a failed attempt), ``pushed`` or ``push_failed: reason``;
``push_attempts``; ``pushed_instances`` (the SOP Instance UIDs the destination stored).

Settings come from this process's environment (:class:`model.io.dicomweb.DicomwebSettings`), read
when a job needs them: an RQ worker and the embedded worker of ``latentseg serve`` alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from worker.contracts import SegmentationRequest

__all__ = ["fetch_source", "push_results"]

log = logging.getLogger(__name__)

Annotate = Callable[[Mapping[str, Any]], None]


def _settings() -> Any:
    from model.io.dicomweb import DicomwebSettings

    return DicomwebSettings()


def fetch_source(
    request: SegmentationRequest, input_path: Path, annotate: Annotate | None = None, settings: Any = None
) -> int:
    """Retrieve ``request.source`` into ``input_path`` (``input.zip``) and check it; returns the instance count.

    ``annotate`` (optional) receives the series' ``input_shape`` and ``input_spacing`` for the
    record, unknown to the API when it queued the reference.
    """
    from model.io.dicom_io import DicomLimits, inspect_dicom_series
    from model.io.dicomweb import RetrievalLimits, make_client, retrieve_series_zip

    assert request.source is not None
    source = request.source
    settings = settings if settings is not None else _settings()
    client = make_client(settings)
    count = retrieve_series_zip(
        client, str(source["study_uid"]), str(source["series_uid"]), input_path,
        RetrievalLimits(max_bytes=int(source["max_bytes"]), max_files=int(source["max_files"])),
    )
    # The same checks as an uploaded zip: one CT series, consistent slices, the voxel cap.
    limits = DicomLimits(
        max_files=int(source["max_files"]), max_total_bytes=int(source["max_bytes"]),
        max_voxels=int(source["max_voxels"]),
    )
    info = inspect_dicom_series(input_path, limits)
    if annotate is not None:
        annotate({"input_shape": list(info.shape), "input_spacing": [round(v, 6) for v in info.spacing]})
    log.info("job %s: retrieved the source series (%d instances)", request.job_id, count)
    return count


def push_results(
    request: SegmentationRequest,
    results: Path,
    annotate: Annotate,
    settings: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """STOW-RS ``results/segmentation.dcm`` with retries; the record is annotated as it goes.

    Never raises: the job's results are already final, and a push failure is a status.
    """
    from model.io.dicom_seg import PROBABILITY_SEG_FILENAME, SEG_FILENAME

    attempts_done = 0
    try:
        import pydicom

        from model.io.dicomweb import make_client, public_url, store_instances

        settings = settings if settings is not None else _settings()
        destination = settings.destination
        if not destination:
            raise RuntimeError("no DICOMweb destination configured (LATENTSEG_DICOMWEB_PUSH_URL or _URL)")
        seg_path = results / SEG_FILENAME
        if not seg_path.is_file():
            raise RuntimeError(f"the job has no {SEG_FILENAME} to push")
        paths = [seg_path]
        if settings.push_uncertainty:  # the FRACTIONAL SEG of the means and the variance maps too
            paths += [p for p in [results / PROBABILITY_SEG_FILENAME] if p.is_file()]
            paths += sorted(results.glob("*_variance.dcm"))
        datasets = [pydicom.dcmread(p) for p in paths]
        annotate({"push_status": "pending", "push_attempts": 0, "push_destination": public_url(destination)})
        wait = settings.push_backoff_s
        reason = ""
        for attempt in range(1, settings.push_attempts + 1):
            attempts_done = attempt
            try:
                stored = store_instances(make_client(settings, destination), datasets)
            except Exception as exc:  # every failure is a reason to report, none is a crash
                reason = " ".join(str(exc).split()) or type(exc).__name__
                log.warning("job %s: push attempt %d/%d failed: %s", request.job_id, attempt, settings.push_attempts,
                            reason)
                if attempt < settings.push_attempts:
                    annotate({"push_status": f"retrying: {reason}", "push_attempts": attempt})
                    sleep(wait)
                    wait = min(wait * 2, settings.push_max_backoff_s)
                continue
            annotate({"push_status": "pushed", "push_attempts": attempt, "pushed_instances": stored})
            log.info("job %s: pushed %d instance(s) on attempt %d", request.job_id, len(stored), attempt)
            return True
        annotate({"push_status": f"push_failed: {reason}", "push_attempts": attempts_done})
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.warning("job %s: push failed: %s", request.job_id, reason)
        try:
            annotate({"push_status": f"push_failed: {reason}", "push_attempts": attempts_done})
        except Exception:
            log.warning("job %s: could not record the push status", request.job_id, exc_info=True)
    return False
