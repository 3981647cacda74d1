"""The non-forking RQ worker, run in this process in burst mode against the real Redis."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service.main import create_app
from service.settings import ServiceSettings
from tests.conftest import Volume
from worker.contracts import bundle_info_key
from worker.main import run_worker
from worker.settings import WorkerSettings


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    """RQ installs SIGINT/SIGTERM handlers when it works; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _settings(tmp_path: Path, redis_url: str, queue: str, **overrides: object) -> ServiceSettings:
    return ServiceSettings(redis_url=redis_url, queue=queue, storage_dir=tmp_path / "storage", **overrides)


def _worker_settings(settings: ServiceSettings, bundle: Path) -> WorkerSettings:
    return WorkerSettings(
        redis_url=settings.redis_url, queue=settings.queue, storage_dir=settings.storage_dir, bundle=bundle, device="cpu"
    )


def test_burst_worker_runs_a_queued_job_to_finished(
    tmp_path: Path, redis_url: str, rq_queue_name: str, tiny_bundle: Path, small_nifti: Volume
) -> None:
    settings = _settings(tmp_path, redis_url, rq_queue_name)
    with TestClient(create_app(settings)) as client:
        response = client.post("/segment?targets=liver&ensemble=2&steps=2", content=small_nifti.path.read_bytes())
        job_id = response.json()["job_id"]
        assert run_worker(_worker_settings(settings, tiny_bundle), burst=True) is True

        status = client.get(f"/jobs/{job_id}").json()
        assert status["status"] == "finished", status
        assert status["progress"] == 100 and status["started_at"] and status["finished_at"]
        manifest = client.get(f"/jobs/{job_id}/results").json()
        assert {f["name"] for f in manifest["files"]} >= {"liver_mean.nii.gz", "liver_variance.nii.gz", "labels.json"}

    connection = redis.Redis.from_url(redis_url)
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    assert job.meta["progress"] == 100
    # A worker withdraws its bundle entry when it exits (readiness reports live workers' bundles).
    assert connection.hgetall(bundle_info_key(rq_queue_name)) == {}


def test_job_timeout_ends_failed_with_the_reason_and_no_partial_result(
    tmp_path: Path, redis_url: str, rq_queue_name: str, tiny_bundle: Path, phantom_volume: Volume
) -> None:
    settings = _settings(tmp_path, redis_url, rq_queue_name, job_timeout_s=1)
    with TestClient(create_app(settings)) as client:
        response = client.post("/segment?targets=liver,pancreas&ensemble=16&steps=200", content=phantom_volume.path.read_bytes())
        job_id = response.json()["job_id"]
        started = time.monotonic()
        run_worker(_worker_settings(settings, tiny_bundle), burst=True)
        assert time.monotonic() - started < 30
        status = client.get(f"/jobs/{job_id}").json()
        assert status["status"] == "failed"
        assert "timed out" in status["error"]
        assert client.get(f"/jobs/{job_id}/results").status_code == 409
    assert sorted(p.name for p in (settings.storage_dir / "jobs" / job_id).iterdir()) == ["input.nii", "job.json"]
    job = Job.fetch(job_id, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED


def test_onnx_backend_worker_matches_the_torch_worker(
    tmp_path: Path, redis_url: str, rq_queue_name: str, tiny_bundle: Path, small_nifti: Volume
) -> None:
    import shutil

    import nibabel as nib
    import numpy as np

    from model.bundle.onnx_backend import export_onnx

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    export_onnx(bundle)
    means = {}
    for backend in ("torch", "onnx"):  # one API per backend: the same upload twice would be deduplicated
        settings = _settings(tmp_path / backend, redis_url, f"{rq_queue_name}-{backend}")
        with TestClient(create_app(settings)) as client:
            response = client.post("/segment?targets=liver&ensemble=2&steps=2&seed=3", content=small_nifti.path.read_bytes())
            job_id = response.json()["job_id"]
            worker = _worker_settings(settings, bundle).model_copy(update={"backend": backend})
            assert run_worker(worker, burst=True) is True
            status = client.get(f"/jobs/{job_id}").json()
            assert status["status"] == "finished", status
            mean = client.get(f"/jobs/{job_id}/results/liver_mean.nii.gz")
            assert mean.status_code == 200
            path = tmp_path / f"{backend}_mean.nii.gz"
            path.write_bytes(mean.content)
            means[backend] = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    from tests.conftest import purge_namespace

    for backend in ("torch", "onnx"):
        purge_namespace(redis_url, f"{rq_queue_name}-{backend}")
    assert means["torch"].shape == means["onnx"].shape
    assert float(np.abs(means["torch"] - means["onnx"]).max()) < 0.05


def test_onnx_backend_without_an_export_is_a_clear_cli_error(
    tmp_path: Path, redis_url: str, rq_queue_name: str, tiny_bundle: Path
) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", "--redis-url", redis_url, "--queue", rq_queue_name,
         "--storage-dir", str(tmp_path / "storage"), "--bundle", str(tiny_bundle), "--backend", "onnx", "--burst"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "export-onnx" in result.stderr, result.stderr
