"""Response bodies of the API (pydantic). Targets travel by vocabulary name, never by id."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from worker.contracts import JobState

__all__ = [
    "Health",
    "JobList",
    "JobStatus",
    "ReadyStatus",
    "ResultFileOut",
    "ResultManifest",
    "SubmitResponse",
    "TargetOut",
    "CodeOut",
    "TargetList",
]


class SubmitResponse(BaseModel):
    job_id: str
    status: JobState
    status_url: str
    targets: list[str]
    duplicate: bool = Field(False, description="the same upload and parameters were already submitted by this key")


class JobStatus(BaseModel):
    job_id: str
    status: JobState
    progress: int = Field(ge=0, le=100, description="0-100, reported by the worker")
    position: int | None = Field(None, description="0-based place in the queue while queued")
    targets: list[str]
    ensemble: int | None = Field(None, description="ensemble members; null until a worker picks the bundle's "
                                                   "default for a request that left it out")
    steps: int | None = Field(None, description="sampling steps; null as ensemble")
    seed: int
    input_shape: list[int]
    input_spacing: list[float]
    nonfinite_voxels: int = Field(0, description="NaN/Inf voxels in the upload (mapped: NaN -> -1024 HU, +Inf -> 4095, -Inf -> -1024)")
    input_format: str = Field("nifti", description="nifti, or dicom (a zip of one DICOM series)")
    dicom_seg: bool = Field(False, description="the results include segmentation.dcm (a DICOM-SEG)")
    fractional: bool = Field(False, description="segmentation.dcm is FRACTIONAL (mean probability), not BINARY")
    bundle: dict[str, str] | None = Field(None, description="the model bundle (name, version) that ran the job")
    cancel_requested: bool = False
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = Field(None, description="why the job failed, in words")
    source: dict[str, str] | None = Field(None, description="the DICOMweb series the job segments (study_uid, series_uid)")
    push_status: str | None = Field(None, description="push=true: pending, retrying: reason, pushed, or push_failed: reason")
    push_attempts: int = Field(0, description="STOW-RS attempts made")
    pushed_instances: list[str] = Field(default_factory=list, description="SOP Instance UIDs the PACS stored")
    results_url: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any], results_url: str | None) -> JobStatus:
        fields = {name: record[name] for name in cls.model_fields if name != "results_url" and name in record}
        fields["results_url"] = results_url if record.get("status") == JobState.FINISHED.value else None
        return cls.model_validate(fields)


class JobList(BaseModel):
    jobs: list[JobStatus]
    missing: list[str] = Field(default_factory=list, description="ids that are unknown (or deleted)")


class ResultFileOut(BaseModel):
    name: str
    size: int
    url: str


class ResultManifest(BaseModel):
    job_id: str
    files: list[ResultFileOut]
    archive_url: str
    bundle: dict[str, str] | None = Field(None, description="the model bundle (name, version) that ran the job")


class CodeOut(BaseModel):
    """A coded concept (DICOM): value, coding scheme designator (SCT = SNOMED CT), meaning."""

    value: str
    scheme: str
    meaning: str


class TargetOut(BaseModel):
    id: int = Field(description="stable vocabulary id (informational; requests use names)")
    name: str
    display: str
    kind: str
    synonyms: list[str]
    snomed: CodeOut | None = Field(description="the segmented property type (None: a private code is used in SEGs)")
    category: CodeOut = Field(description="the segmented property category")
    side: str | None = Field(description="the patient's side (left/right), the SEG's laterality modifier")
    connected: bool = Field(False, description="one connected piece: largest_component post-processing applies to it")
    served: bool | None = Field(None, description="whether the deployed bundle(s) serve it (None: no bundle known yet)")
    served_reason: str | None = Field(None, description="why it is not served (untrained, or its left-out Dice)")


class TargetList(BaseModel):
    targets: list[TargetOut]
    vocabulary_sha256: str
    served_targets: list[str] | None = Field(None, description="targets POST /segment accepts now (None: unknown)")
    served_note: str | None = Field(None, description="why the served targets are unknown")
    bundles: list[dict[str, str]] = Field(default_factory=list, description="the bundle(s) the answer comes from")


class Health(BaseModel):
    status: str = "ok"


class ReadyStatus(BaseModel):
    ready: bool
    mode: str
    workers: int
    bundle: dict[str, str] | None = Field(None, description="the bundle every live worker serves (None if mixed)")
    bundles: list[dict[str, str]] = Field(default_factory=list, description="distinct bundles of the live workers")
    problems: list[str]
