"""The job function, imported by RQ through its dotted path ``worker.tasks.run_segmentation``.

The same function runs in RQ workers (``latentseg worker``) and in the embedded in-process
worker of ``latentseg serve``. It segments every requested target in one pass, writes the
results into a private temp directory on the storage filesystem and renames it to
``results/`` so a reader never sees half a result. Any failure is written into our durable
record in words (no traceback) and re-raised, so RQ marks its own job failed too. Every ending
(finished, failed with its reason, canceled) is also written into the job's manifest on storage
(:func:`record_terminal_state`), so a Redis that loses its data cannot bring the job back to life.

Inputs and outputs:

- NIfTI (``input.nii``): :func:`model.inference.pipeline.segment_file` (streamed, one full-resolution map
  in memory at a time). With ``dicom_seg`` the NIfTI outputs are written the same way, then
  :func:`model.io.interop.write_interop_outputs` adds ``segmentation.dcm`` referencing a CT series
  derived from the volume, shipped as ``dicom_ct.zip``.
- DICOM (``input.zip``, a validated series): :func:`model.io.dicom_io.read_dicom_series`; results
  are on the series' own grid, and ``segmentation.dcm`` (when asked for) references the source
  series. ``preview.png`` is written too (the API draws NIfTI previews on demand, but not from
  a zip). The SEG copies patient/study attributes from the source, as DICOM requires; nothing
  from the DICOM headers is logged.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from model.errors import ServerFault, UserError
from worker.contracts import (
    MANIFEST_NAME,
    RESULTS_TMP_PREFIX,
    JobInterrupted,
    JobReporter,
    JobState,
    SegmentationRequest,
    job_dir,
    results_dir,
    utc_now,
    write_json_atomically,
)
from worker.memory import MiB, budget_message
from worker.runtime import WorkerRuntime, WorkerStopped, current_runtime

__all__ = [
    "JobStopped", "OverMemoryBudget", "check_memory", "describe_failure", "record_terminal_state", "run_segmentation",
]

log = logging.getLogger(__name__)

# The disk (or the caller's quota) is full: the job says "storage full", not an OSError.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# With DICOM-SEG/preview outputs, the pipeline reports up to this fraction of the progress.
PIPELINE_SHARE = 0.9


class JobStopped(ServerFault, RuntimeError):
    """A job its worker stopped (shut down with a second SIGTERM, or past its stop grace period)."""


class OverMemoryBudget(UserError, RuntimeError):
    """A job whose estimated peak memory (worker.memory) is over the worker's budget."""

    status = 413


def describe_failure(exc: BaseException, storage_root: Path | None = None) -> str:
    """One line a user can read: the caller's errors (:class:`~model.errors.UserError`) as
    ``invalid input: <message>``, anything else with its type (or its own words, below).

    Server paths under ``storage_root`` are replaced by their file name, so clients never learn
    the storage layout.
    """
    from model.errors import BundleError
    from model.io.dicomweb import DicomwebError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if storage_root is not None:
        text = re.sub(re.escape(str(storage_root).rstrip("/")) + r"/\S*?([^/\s]+)(?=[\s:,)]|$)", r"\1", text)
    if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
        return f"storage full: {text}"
    # Their message is the reason: "stopped: ...", the memory budget's sentence, "source unreachable: ...".
    if isinstance(exc, (JobStopped, OverMemoryBudget, DicomwebError)):
        return text
    if isinstance(exc, UserError):
        return f"invalid input: {text}"
    if isinstance(exc, BundleError):
        return f"bundle problem: {text}"
    if type(exc).__name__ == "JobTimeoutException":
        return f"timed out: {text}"
    if isinstance(exc, TimeoutError) and text.startswith("timed out"):
        return text
    return f"{type(exc).__name__}: {text}"


def run_segmentation(
    payload: dict[str, Any],
    *,
    runtime: WorkerRuntime | None = None,
    reporter: JobReporter | None = None,
) -> dict[str, Any]:
    """Segment one uploaded volume; returns ``{"job_id", "results": [file names]}``.

    RQ calls it with ``payload`` only: the runtime comes from the worker's
    :func:`worker.runtime.runtime_context` and the reporter writes our Redis record.
    """
    if reporter is None:
        from worker.reporting import rq_reporter

        try:
            heartbeat_s = (runtime if runtime is not None else current_runtime()).heartbeat_s
        except RuntimeError:
            heartbeat_s = 10.0  # the missing runtime is reported as the job's failure below
        reporter = rq_reporter(heartbeat_s)
    storage_root: Path | None = None
    started: dict[str, Any] = {}  # what the manifest learns of the start, with the ending
    try:
        request = SegmentationRequest.from_payload(payload)
        runtime = runtime if runtime is not None else current_runtime()
        storage_root = runtime.storage_root
        if not reporter.started():
            log.info("job %s: not claimed (canceled or taken before it started); skipped", request.job_id)
            return {"job_id": request.job_id, "results": [], "skipped": True}
        started["started_at"] = utc_now()
        request = with_sampling(runtime, request, reporter, started)
        log.info("job %s: started (%d targets)", request.job_id, len(request.targets))
        stoppable = runtime.stop.job_region() if runtime.stop is not None else nullcontext()
        try:
            with reporter.interruptible():
                with stoppable:
                    names = _segment_atomically(runtime, request, reporter)
        except JobInterrupted as exc:
            # The rename may have happened just before the interrupt landed: no result stays visible.
            shutil.rmtree(results_dir(runtime.storage_root, request.job_id), ignore_errors=True)
            log.info("job %s: %s", request.job_id, exc.reason)
            if exc.state == JobState.CANCELED.value:
                reporter.canceled(exc.reason)
                record_terminal_state(runtime.storage_root, request.job_id, {
                    **started, "status": JobState.CANCELED.value, "finished_at": utc_now(), "error": exc.reason,
                })
                return {"job_id": request.job_id, "results": [], "canceled": True}
            if isinstance(exc, WorkerStopped):
                raise JobStopped(exc.reason) from None
            raise TimeoutError(exc.reason) from None
    except Exception as exc:
        reason = describe_failure(exc, storage_root)
        if reason.startswith("storage full") and reporter.percent >= 0:
            reason += f" (the job had reached {reporter.percent} %)"
        log.warning("job %s failed: %s", payload.get("job_id"), reason)
        reporter.failed(reason)
        if storage_root is not None:
            record_terminal_state(storage_root, str(payload.get("job_id")), {
                **started, "status": JobState.FAILED.value, "finished_at": utc_now(), "error": reason,
            })
        raise
    bundle = {"name": str(runtime.bundle.name), "version": str(runtime.bundle.version)}
    reporter.finished(names, bundle=bundle)
    record_terminal_state(runtime.storage_root, request.job_id, {
        **started, "status": JobState.FINISHED.value, "progress": 100, "finished_at": utc_now(), "results": names,
        "bundle": bundle, "error": None,
    })
    log.info("job %s: finished (%d files)", request.job_id, len(names))
    if request.push:  # after the results are final: a failed push is a status, never a lost result
        from worker.dicomweb import push_results

        push_results(request, results_dir(runtime.storage_root, request.job_id), reporter.annotate)
    return {"job_id": request.job_id, "results": names}


def with_sampling(
    runtime: WorkerRuntime, request: SegmentationRequest, reporter: JobReporter, started: dict[str, Any]
) -> SegmentationRequest:
    """``request`` with the ensemble and steps it runs with: its own, else the bundle's ``sampling``
    section, checked against the model's range and the operator's caps (``check_sampling``, an
    :class:`~model.errors.InputError` above them). A default picked here goes into the record
    (and, with the ending, the manifest)."""
    from model.bundle.manifest import resolve_sampling

    ensemble, steps = resolve_sampling(runtime.bundle.config.sampling, request.ensemble, request.steps, runtime.sampling_caps)
    if (ensemble, steps) == (request.ensemble, request.steps):
        return request
    chosen = {"ensemble": ensemble, "steps": steps}
    reporter.annotate(chosen)
    started.update(chosen)
    return dataclasses.replace(request, ensemble=ensemble, steps=steps)


def record_terminal_state(storage_root: Path, job_id: str, fields: Mapping[str, Any]) -> bool:
    """Write a job's ending into its manifest on storage (``job.json``, the API's copy of the
    record), so a Redis that loses its data gives the job back in this state, not queued again.

    Atomic (a private temp file, then ``os.replace``); a job without a manifest (never accepted
    through the API) is left alone. Returns whether the manifest was written; a storage error is
    logged, never a job failure.
    """
    try:
        path = job_dir(storage_root, job_id) / MANIFEST_NAME
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("record"), dict):
            return False
        manifest["record"].update(fields)
        write_json_atomically(path, manifest)
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        log.warning("job %s: could not record its ending on storage (%s)", job_id, type(exc).__name__)
        return False
    return True


def check_memory(runtime: WorkerRuntime, request: SegmentationRequest, input_path: Path) -> int | None:
    """Refuse (:class:`OverMemoryBudget`) a NIfTI job whose estimated peak is over the runtime's
    budget, from the header alone (nothing is allocated); returns the estimate in bytes, or None
    when unchecked (no budget, or a DICOM series: its size is checked by the API's voxel cap)."""
    if runtime.memory is None or runtime.memory_budget_mb is None or request.is_dicom:
        return None
    import nibabel as nib

    from model.errors import InputError

    try:
        header = nib.load(str(input_path)).header
        shape = tuple(int(n) for n in header.get_data_shape()[:3])
        spacing = tuple(float(d) for d in header.get_zooms()[:3])
    except Exception as exc:  # unreadable: the pipeline reports it in its own words
        raise InputError(f"not a readable NIfTI header ({type(exc).__name__})") from exc
    if len(shape) != 3:
        return None  # the pipeline refuses it, saying why
    estimate = runtime.memory.estimate_bytes(shape, spacing, len(request.targets), request.ensemble)
    if estimate > runtime.memory_budget_mb * MiB:
        raise OverMemoryBudget(budget_message(estimate, runtime.memory_budget_mb))
    return estimate


def _segment_atomically(runtime: WorkerRuntime, request: SegmentationRequest, reporter: JobReporter) -> list[str]:
    directory = job_dir(runtime.storage_root, request.job_id)
    input_path = request.input_path(runtime.storage_root)
    if request.source is not None and not input_path.is_file():  # a DICOMweb reference: WADO-RS it first
        from worker.dicomweb import fetch_source

        fetch_source(request, input_path, reporter.annotate)
    if not input_path.is_file():
        raise FileNotFoundError(f"the upload for job {request.job_id} is missing from storage")
    check_memory(runtime, request, input_path)
    final = results_dir(runtime.storage_root, request.job_id)
    tmp = directory / f"{RESULTS_TMP_PREFIX}{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        written = _segment_into(runtime, request, input_path, tmp, reporter.progress)
        names = sorted(Path(p).name for p in written)
        if final.exists():  # a retried job: the previous complete result is replaced whole
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names


def _segment_into(
    runtime: WorkerRuntime,
    request: SegmentationRequest,
    input_path: Path,
    out_dir: Path,
    progress: Callable[[float], None],
) -> list[Path]:
    from model.inference.pipeline import SegmentationOptions, predict_model_grid, segment_file, write_prediction

    options = SegmentationOptions(
        ensemble=request.ensemble, steps=request.steps, seed=request.seed, largest_component=request.largest_component,
        exclusive=request.exclusive,
    )
    if not request.is_dicom and not request.dicom_seg:
        return segment_file(runtime.bundle, input_path, out_dir, list(request.targets), options=options,
                            progress=progress)

    from model.io.interop import InteropRequest, write_interop_outputs

    source_images = None
    if request.is_dicom:
        from model.io.dicom_io import read_dicom_series

        series = read_dicom_series(input_path)
        volume, source_images = series.volume, series.headers
        del series
    else:
        from model.inference.preprocessing import load_nifti

        volume = load_nifti(input_path)

    def scaled(fraction: float) -> None:  # the SEG and the picture take the last part
        progress(PIPELINE_SHARE * fraction)

    prediction = predict_model_grid(runtime.bundle, volume, list(request.targets), options, scaled)
    written = write_prediction(prediction, out_dir, scaled, hu=volume.data)  # with statistics.json
    extras = InteropRequest(
        dicom_seg=request.dicom_seg, fractional=request.fractional, preview=request.is_dicom, derived_ct_as_zip=True
    )
    written += write_interop_outputs(
        out_dir, volume, prediction.targets, extras, source_images=source_images,
        bundle_name=str(runtime.bundle.name), bundle_version=str(runtime.bundle.version),
        parameters={"ensemble": str(request.ensemble), "steps": str(request.steps), "seed": str(request.seed)},
    )
    progress(1.0)
    return written
