"""Settings come from LATENTSEG_* variables, with plain REDIS_URL for Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import ServiceSettings
from worker.settings import WorkerSettings


def test_no_redis_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("LATENTSEG_REDIS_URL", raising=False)
    settings = ServiceSettings()
    assert settings.embedded and settings.redis_url is None
    assert settings.bundle is None


def test_plain_redis_url_and_prefixed_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/3")
    monkeypatch.setenv("LATENTSEG_STORAGE_DIR", str(tmp_path))
    monkeypatch.setenv("LATENTSEG_MAX_UPLOAD_BYTES", "12345")
    monkeypatch.setenv("LATENTSEG_JOB_TIMEOUT_S", "77")
    monkeypatch.setenv("LATENTSEG_QUEUE", "q1")
    settings = ServiceSettings()
    assert not settings.embedded
    assert settings.redis_url == "redis://example:6379/3"
    assert settings.storage_dir == tmp_path
    assert (settings.max_upload_bytes, settings.job_timeout_s, settings.queue) == (12345, 77, "q1")
    worker = WorkerSettings()
    assert (worker.redis_url, worker.storage_dir, worker.queue) == ("redis://example:6379/3", tmp_path, "q1")


def test_default_storage_is_an_app_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LATENTSEG_STORAGE_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert ServiceSettings().storage_dir == tmp_path / "latentseg"
    assert WorkerSettings().storage_dir == tmp_path / "latentseg"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTSEG_PORT", "70000")
    with pytest.raises(ValueError):
        ServiceSettings()
