"""Embedded mode in-process: the worker thread starts with the app and reports a broken bundle."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import ServiceSettings
from tests.conftest import Volume


def test_unloadable_bundle_fails_jobs_with_the_reason_and_is_not_ready(tmp_path: Path, small_nifti: Volume) -> None:
    missing = tmp_path / "no-such-bundle"
    settings = ServiceSettings(storage_dir=tmp_path / "storage", bundle=missing)
    assert settings.embedded
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/segment?targets=liver", content=small_nifti.path.read_bytes()).json()["job_id"]
        deadline = time.monotonic() + 60
        while (status := client.get(f"/jobs/{job_id}").json())["status"] == "queued":
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["status"] == "failed"
        assert status["error"].startswith("the bundle could not be loaded")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["mode"] == "embedded"
        assert any("bundle could not be loaded" in p for p in ready.json()["problems"])
