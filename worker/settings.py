"""Worker runtime settings from the environment (pydantic-settings); command-line flags override them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.bundle.manifest import SamplingCaps
from model.io.dicomweb import DicomwebSettings
from worker.contracts import default_storage_dir

__all__ = ["WorkerSettings"]


class WorkerSettings(BaseSettings):
    """``LATENTSEG_*`` variables (plus plain ``REDIS_URL``). Never stored in bundles."""

    model_config = SettingsConfigDict(env_prefix="LATENTSEG_", frozen=True, extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "LATENTSEG_REDIS_URL"))
    queue: str = "latentseg"
    storage_dir: Path = Field(default_factory=default_storage_dir)
    # None = the demo bundle shipped in the package.
    bundle: Path | None = None
    # None = CUDA when present, else CPU (torch backend only).
    device: str | None = None
    # "onnx": ONNX Runtime on the bundle's export (`latentseg export-onnx`); CUDA provider when present.
    backend: Literal["torch", "onnx"] = "torch"
    # None = <bundle>/onnx.
    onnx_dir: Path | None = None
    name: str | None = None
    # A running job refreshes its liveness key this often; the API fails a started job whose key
    # has been gone for three intervals (its worker was killed).
    heartbeat_s: float = Field(default=10.0, gt=0)
    # The PACS jobs retrieve from and push to (LATENTSEG_DICOMWEB_*: model.io.dicomweb); checked when
    # the worker starts, read again by each DICOMweb job (worker.dicomweb).
    dicomweb: DicomwebSettings = Field(default_factory=DicomwebSettings)
    # After a SIGTERM, a running job gets this long to finish; then it is stopped and ends
    # failed ("stopped: ..."), as on a second SIGTERM. None = wait for it (up to the job timeout):
    # set it a little below the supervisor's kill timeout (compose stop_grace_period).
    stop_grace_s: float | None = Field(default=None, gt=0)
    # LATENTSEG_WORKER_MEMORY_MB: a job whose estimated peak memory (worker.memory) is above this
    # fails before it allocates, saying so. None = 80 % of the cgroup's limit or the machine's memory.
    worker_memory_mb: int | None = Field(default=None, ge=64)
    # The operator's caps, as the API's (LATENTSEG_MAX_ENSEMBLE, LATENTSEG_MAX_STEPS): a job whose ensemble
    # or steps (its own or the bundle's default) is above them fails saying so.
    max_ensemble: int = Field(default=32, ge=1)
    max_steps: int = Field(default=1000, ge=1)

    @property
    def sampling_caps(self) -> SamplingCaps:
        return SamplingCaps(max_ensemble=self.max_ensemble, max_steps=self.max_steps)
