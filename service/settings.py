"""API runtime settings from the environment (pydantic-settings).

Every variable is ``LATENTSEG_<FIELD>`` (e.g. ``LATENTSEG_STORAGE_DIR``), except Redis, which
also reads the conventional plain ``REDIS_URL``. No ``REDIS_URL`` means embedded mode: the same
API with an in-process worker thread. Settings are runtime environment, never stored in bundles.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.contracts import default_storage_dir

__all__ = ["ServiceSettings"]

MiB = 1024 * 1024


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTSEG_", frozen=True, extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "LATENTSEG_REDIS_URL"))
    # Namespaces RQ's queue and our Redis keys; API and workers must agree on it.
    queue: str = "latentseg"
    storage_dir: Path = Field(default_factory=default_storage_dir)
    # Embedded mode only: None = the demo bundle shipped in the package; device None = CUDA if present.
    bundle: Path | None = None
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Upload limits: compressed bytes are counted while streaming; voxels come from the header.
    max_upload_bytes: int = Field(default=1024 * MiB, ge=1)
    max_voxels: int = Field(default=1024 * 1024 * 1024, ge=1)

    # Request limits.
    max_ensemble: int = Field(default=32, ge=1)
    max_steps: int = Field(default=1000, ge=1)
    default_ensemble: int = Field(default=5, ge=1)
    default_steps: int = Field(default=10, ge=1)

    # RQ lifetimes (seconds). Our durable record outlives RQ's result TTL.
    job_timeout_s: int = Field(default=3600, ge=1)
    result_ttl_s: int = Field(default=24 * 3600, ge=0)
    failure_ttl_s: int = Field(default=7 * 24 * 3600, ge=0)
    record_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)

    @property
    def embedded(self) -> bool:
        return not self.redis_url
