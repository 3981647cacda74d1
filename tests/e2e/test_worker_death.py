"""A worker killed mid-job (SIGKILL: no handler runs) leaves no job stuck in `started`."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Volume, wait_until
from tests.e2e.flow import submit

pytestmark = pytest.mark.slow


def test_killed_worker_turns_its_job_failed_with_the_reason(
    start_server, start_worker, redis_url: str, rq_queue_name: str, tiny_bundle: Path,  # type: ignore[no-untyped-def]
    phantom_volume: Volume, tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    # Heartbeat every 2 s: the job's liveness key expires 6 s after the worker dies.
    worker = start_worker(rq_queue_name, storage, tiny_bundle, env={"LATENTSEG_HEARTBEAT_S": "2"})
    server = start_server(
        env={"REDIS_URL": redis_url, "LATENTSEG_QUEUE": rq_queue_name, "LATENTSEG_STORAGE_DIR": str(storage)}
    )
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        job_id = submit(http, phantom_volume.path, "liver,pancreas", ensemble=16, steps=400)
        wait_until(lambda: http.get(f"/jobs/{job_id}").json()["status"] == "started", 60, "job started", worker)
        time.sleep(3.0)
        assert http.get(f"/jobs/{job_id}").json()["status"] == "started"  # heartbeats keep it alive
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)

        wait_until(lambda: http.get(f"/jobs/{job_id}").json()["status"] == "failed", 30, "job marked failed")
        state = http.get(f"/jobs/{job_id}").json()
        assert "worker" in state["error"] and "stopped" in state["error"]
        assert http.get(f"/jobs/{job_id}/results").status_code == 409
    assert not (storage / "jobs" / job_id / "results").exists()
