"""API runtime settings from the environment (pydantic-settings).

Every variable is ``LATENTSEG_<FIELD>`` (e.g. ``LATENTSEG_STORAGE_DIR``), except Redis, which
also reads the conventional plain ``REDIS_URL``. No ``REDIS_URL`` means embedded mode: the same
API with an in-process worker thread. Settings are runtime environment, never stored in bundles.
The fields the workers share (Redis, queue, storage, bundle, memory budget, PACS, sampling caps)
are :class:`worker.shared_settings.SharedSettings`'; the ones here are the API's own.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import Field, field_validator

from worker.shared_settings import SharedSettings

__all__ = ["ServiceSettings"]

MiB = 1024 * 1024
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServiceSettings(SharedSettings):
    """``LATENTSEG_*`` variables (plus plain ``REDIS_URL``); bundle, device, backend, onnx_dir and
    worker_memory_mb matter in embedded mode only (the in-process worker's)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Upload limits. Compressed bytes are counted while streaming (Content-Length or not);
    # decompressed bytes and voxels come from the header and are enforced while inflating.
    max_upload_bytes: int = Field(default=1024 * MiB, ge=1)
    max_decompressed_bytes: int = Field(default=2048 * MiB, ge=1024)
    max_voxels: int = Field(default=512 * 512 * 2048, ge=1)
    # A DICOM series zip: at most this many members (its inflated bytes count against
    # max_decompressed_bytes, its voxels against max_voxels).
    max_dicom_files: int = Field(default=10_000, ge=2)
    # NaN/Inf voxels: kept and mapped by the model (NaN -> -1024 HU, +Inf -> 4095, -Inf -> -1024)
    # unless this is true, which refuses such uploads with 422.
    reject_nonfinite: bool = False
    # The validator subprocess (see service.uploads.upload_sandbox).
    upload_check_timeout_s: float = Field(default=120.0, gt=0)
    upload_check_memory_bytes: int = Field(default=1024 * MiB, ge=64 * MiB)
    upload_check_cpu_s: int = Field(default=120, ge=1)

    # Access. api_keys maps a key's name (its tenant) to the SHA-256 hex digest of the key
    # (``latentseg serve --hash-key``); api_keys_file holds "name digest" lines. Any key
    # configured makes a bearer key mandatory. With none the API is open, which is allowed only
    # on a loopback host unless allow_open is set.
    api_keys: dict[str, str] = Field(default_factory=dict)
    api_keys_file: Path | None = None
    allow_open: bool = False

    # Slow clients (service.slow_clients): request headers must be complete this long after their
    # first byte (else 408 and the connection closes); a kept-alive connection idle this long is
    # closed; an upload body that sends nothing for body_idle_timeout_s, or takes longer than
    # upload_deadline_s in all, gets 408; a key may have this many POST /segment in flight (429).
    header_timeout_s: float = Field(default=15.0, gt=0)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    upload_deadline_s: float = Field(default=900.0, gt=0)
    max_uploads_in_flight_per_key: int = Field(default=4, ge=1)

    # Admission: a key's queued + running jobs, and the whole queue; over either -> 429.
    max_active_jobs_per_key: int = Field(default=16, ge=1)
    max_queued_jobs: int = Field(default=1000, ge=1)
    retry_after_s: int = Field(default=30, ge=1)

    # How often the API reconciles stored uploads with records and the queue (RQ mode).
    reconcile_interval_s: float = Field(default=60.0, gt=0)

    # RQ mode: answer POST /segment with 503 while no live worker has published its bundle (what it
    # serves is unknown then); off by default, so jobs wait in the queue for workers still starting.
    require_worker_bundle: bool = False
    # Free-text targets (service.prompt_targets): caps checked before any prompt is resolved or
    # embedded (422 above them), and the size of the bounded cache of prompt embeddings.
    max_target_chars: int = Field(default=64, ge=1)
    max_targets: int = Field(default=32, ge=1)
    max_targets_chars: int = Field(default=1024, ge=1)
    prompt_cache_entries: int = Field(default=1024, ge=0)
    max_prompt_embeddings: int = Field(default=16, ge=1)  # embedding passes (cache misses) per request

    # RQ lifetimes (seconds). Our durable record outlives RQ's result TTL.
    job_timeout_s: int = Field(default=3600, ge=1)
    result_ttl_s: int = Field(default=24 * 3600, ge=0)
    failure_ttl_s: int = Field(default=7 * 24 * 3600, ge=0)
    record_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)

    @field_validator("api_keys")
    @classmethod
    def _digests_only(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            if not name or not _SHA256_HEX.fullmatch(digest):
                raise ValueError(
                    f"api key {name!r}: store the SHA-256 hex digest of the key (latentseg serve --hash-key), not the key"
                )
        return value

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    def key_digests(self) -> dict[str, str]:
        """Every configured key: name -> SHA-256 hex digest (``api_keys`` plus ``api_keys_file``)."""
        keys = dict(self.api_keys)
        if self.api_keys_file is not None:
            for number, line in enumerate(self.api_keys_file.read_text().splitlines(), 1):
                parts = line.split("#", 1)[0].split()
                if not parts:
                    continue
                if len(parts) != 2 or not _SHA256_HEX.fullmatch(parts[1]):
                    raise ValueError(f"{self.api_keys_file}:{number}: expected 'name sha256-hex-digest'")
                keys[parts[0]] = parts[1]
        return keys
