"""The settings the API and its workers share (pydantic-settings), in one class both derive from.

:class:`service.settings.ServiceSettings` and :class:`worker.settings.WorkerSettings` add their
own fields to these. Every variable is ``LATENTSEG_<FIELD>`` (e.g. ``LATENTSEG_STORAGE_DIR``),
except Redis, which also reads the conventional plain ``REDIS_URL``. Settings are runtime
environment, never stored in bundles. Torch-free: the API imports it (as it does
:mod:`worker.contracts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.bundle.manifest import SamplingCaps
from model.io.dicomweb import DicomwebSettings
from worker.contracts import default_storage_dir

__all__ = ["SharedSettings"]


class SharedSettings(BaseSettings):
    """What the API and a worker both read: Redis and the queue, storage, the bundle a worker (or the
    API's embedded worker) loads, its memory budget, the PACS, and the caps on sampling."""

    model_config = SettingsConfigDict(env_prefix="LATENTSEG_", frozen=True, extra="ignore")

    # None: embedded mode for the API (an in-process worker); a worker needs it.
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "LATENTSEG_REDIS_URL"))
    # Namespaces RQ's queue and our Redis keys; API and workers must agree on it.
    queue: str = "latentseg"
    storage_dir: Path = Field(default_factory=default_storage_dir)
    # The bundle a worker loads (the API's own only in embedded mode). None = the demo bundle shipped
    # in the package.
    bundle: Path | None = None
    # None = CUDA when present, else CPU (torch backend only).
    device: str | None = None
    # "onnx": ONNX Runtime on the bundle's export (`latentseg export-onnx`); CUDA provider when present.
    backend: Literal["torch", "onnx"] = "torch"
    # None = <bundle>/onnx.
    onnx_dir: Path | None = None
    # LATENTSEG_WORKER_MEMORY_MB: a job whose estimated peak memory (worker.memory) is above this
    # fails before it allocates, saying so. None = 80 % of the cgroup's limit or the machine's memory.
    worker_memory_mb: int | None = Field(default=None, ge=64)
    # The PACS (LATENTSEG_DICOMWEB_URL, _AUTH, ...: model.io.dicomweb): the API checks a
    # POST /segment?study_uid=... against it; workers retrieve from and push to it (checked when a
    # worker starts, read again by each DICOMweb job: worker.dicomweb).
    dicomweb: DicomwebSettings = Field(default_factory=DicomwebSettings)
    # Caps on ensemble and steps: the API answers 422 above them before anything is queued; a worker
    # fails a job whose values (its own or the bundle's default) are above them. The defaults are the
    # bundle's `sampling` section and the ranges the model's (model.bundle.manifest.check_sampling):
    # neither is a setting.
    max_ensemble: int = Field(default=32, ge=1)
    max_steps: int = Field(default=1000, ge=1)

    @property
    def sampling_caps(self) -> SamplingCaps:
        return SamplingCaps(max_ensemble=self.max_ensemble, max_steps=self.max_steps)
