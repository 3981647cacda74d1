"""The API and the workers read their shared settings through one class (issue 20 item 6), under
the same environment variable names as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import ServiceSettings
from worker.settings import WorkerSettings
from worker.shared_settings import SharedSettings

SHARED = {
    "redis_url", "queue", "storage_dir", "bundle", "device", "backend", "onnx_dir", "worker_memory_mb", "dicomweb",
    "max_ensemble", "max_steps",
}


def test_both_settings_derive_the_shared_fields_from_one_class() -> None:
    assert issubclass(ServiceSettings, SharedSettings) and issubclass(WorkerSettings, SharedSettings)
    assert set(SharedSettings.model_fields) == SHARED
    for cls in (ServiceSettings, WorkerSettings):
        assert SHARED <= set(cls.model_fields)
        assert not SHARED & set(cls.__annotations__), "a shared field is declared again"

@pytest.mark.parametrize("cls", [ServiceSettings, WorkerSettings])
def test_the_variable_names_are_unchanged(cls: type[SharedSettings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "REDIS_URL": "redis://example:6379/3", "LATENTSEG_QUEUE": "q", "LATENTSEG_STORAGE_DIR": str(tmp_path),
        "LATENTSEG_BUNDLE": str(tmp_path / "b"), "LATENTSEG_DEVICE": "cpu", "LATENTSEG_BACKEND": "onnx",
        "LATENTSEG_ONNX_DIR": str(tmp_path / "o"), "LATENTSEG_WORKER_MEMORY_MB": "512",
        "LATENTSEG_MAX_ENSEMBLE": "7", "LATENTSEG_MAX_STEPS": "50", "LATENTSEG_DICOMWEB_URL": "https://pacs.example/dicom-web",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = cls()
    assert (settings.redis_url, settings.queue, settings.storage_dir, settings.bundle, settings.device) == (
        "redis://example:6379/3", "q", tmp_path, tmp_path / "b", "cpu")
    assert (settings.backend, settings.onnx_dir, settings.worker_memory_mb) == ("onnx", tmp_path / "o", 512)
    assert (settings.sampling_caps.max_ensemble, settings.sampling_caps.max_steps) == (7, 50)
    assert str(settings.dicomweb.url).startswith("https://pacs.example/dicom-web")
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setenv("LATENTSEG_REDIS_URL", "redis://other:6379/0")
    assert cls().redis_url == "redis://other:6379/0"
