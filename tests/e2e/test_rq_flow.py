"""End to end with real parts: Redis on 127.0.0.1, a `latentseg worker` process, the API under
uvicorn (`latentseg serve`) on a free port, and an HTTP client.

These use the tiny random bundle, so the masks are not meaningful: the checks are shapes,
affines, ranges and the job lifecycle. The overlap check with the trained demo bundle is in
test_demo_bundle.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Volume, write_truncated_gzip_nifti
from tests.e2e.flow import check_mean_and_variance, download_results, poll, submit

pytestmark = pytest.mark.slow


def _rq_stack(start_server, start_worker, redis_url: str, queue: str, storage: Path, bundle: Path | None):  # type: ignore[no-untyped-def]
    start_worker(queue, storage, bundle)
    return start_server(
        env={"REDIS_URL": redis_url, "LATENTSEG_QUEUE": queue, "LATENTSEG_STORAGE_DIR": str(storage)}
    )


def test_two_targets_submit_poll_download(
    start_server, start_worker, redis_url: str, rq_queue_name: str, tiny_bundle: Path,  # type: ignore[no-untyped-def]
    phantom_volume: Volume, tmp_path: Path,
) -> None:
    server = _rq_stack(start_server, start_worker, redis_url, rq_queue_name, tmp_path / "storage", tiny_bundle)
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["workers"] == 1 and ready.json()["bundle"]["name"] == "random-tiny"

        job_id = submit(http, phantom_volume.path, "liver,pancreas", ensemble=2, steps=3)
        states = poll(http, [job_id])
        state = states[job_id]
        assert state["status"] == "finished", state
        assert state["progress"] == 100 and state["error"] is None

        paths = download_results(http, job_id, tmp_path / "download")
        check_mean_and_variance(paths, ["liver", "pancreas"], phantom_volume)

        assert http.delete(f"/jobs/{job_id}").status_code == 204
        assert http.get(f"/jobs/{job_id}").status_code == 404
        assert not (tmp_path / "storage" / "jobs" / job_id).exists()


def test_errors_and_a_failing_job_end_failed_with_the_reason(
    start_server, start_worker, redis_url: str, rq_queue_name: str, tiny_bundle: Path,  # type: ignore[no-untyped-def]
    phantom_volume: Volume, tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    server = start_server(env={"REDIS_URL": redis_url, "LATENTSEG_QUEUE": rq_queue_name, "LATENTSEG_STORAGE_DIR": str(storage)})
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        unknown = http.post("/segment?targets=liver,unicorn", content=phantom_volume.path.read_bytes())
        assert unknown.status_code == 422 and "pancreas" in unknown.json()["detail"]["valid"]
        not_nifti = http.post("/segment?targets=liver", files={"file": ("a.nii.gz", b"GIF89a" + bytes(500))})
        assert not_nifti.status_code == 415 and "NIfTI" in not_nifti.json()["detail"]
        truncated = write_truncated_gzip_nifti(phantom_volume, tmp_path / "broken.nii.gz")
        refused = http.post("/segment?targets=liver", content=truncated.read_bytes())
        assert refused.status_code == 422 and "truncated" in refused.json()["detail"]
        assert http.get(f"/jobs/{'0' * 32}").status_code == 404

        # Accepted, then its stored input disappears before a worker takes it: the worker fails it.
        bad = submit(http, phantom_volume.path, "liver", ensemble=2, steps=2, seed=1)
        good = submit(http, phantom_volume.path, "liver", ensemble=2, steps=2)
        (storage / "jobs" / bad / "input.nii").unlink()
        start_worker(rq_queue_name, storage, tiny_bundle)
        states = poll(http, [bad, good])
        assert states[bad]["status"] == "failed"
        assert "missing from storage" in states[bad]["error"] and str(storage) not in states[bad]["error"]
        assert states[good]["status"] == "finished"  # the worker survives a failing job
        assert http.get(f"/jobs/{bad}/results").status_code == 409
