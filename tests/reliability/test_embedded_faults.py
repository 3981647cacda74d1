"""Embedded mode (``latentseg serve`` without Redis) under the faults the RQ tests apply: the process
SIGKILLed mid-job and restarted on the same storage, a running job cancelled, and a full storage
volume. Real server processes, real HTTP, the tiny random bundle.

(The memory budget in embedded mode: ``test_worker_memory.py::
test_embedded_mode_refuses_an_over_budget_upload_with_413_once_its_bundle_is_loaded``; the
embedded job timeout: ``test_faults.py``.)
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Process, make_small_volume, wait_until
from tests.reliability.conftest import LONG, wait_status

pytestmark = pytest.mark.slow

CHEAP = {"targets": "liver", "ensemble": 1, "steps": 2}
ENDED = {"finished", "failed", "canceled"}


def _submit(http: httpx.Client, body: bytes, **params: object) -> str:
    response = http.post("/segment", params={**CHEAP, **params}, content=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _embedded(serve: Callable[..., Process], storage: Path, bundle: Path, **extra: str) -> Process:
    server = serve({"LATENTSEG_STORAGE_DIR": str(storage), "LATENTSEG_BUNDLE": str(bundle), **extra})
    wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 90, "embedded bundle loaded", server)
    return server


def _temp_dirs(storage: Path, job_id: str) -> list[str]:
    return [p.name for p in (storage / "jobs" / job_id).glob(".results-*")]


def test_a_sigkilled_embedded_server_restarts_with_every_accepted_job_in_a_truthful_state(
    serve, tiny_bundle: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    quick = make_small_volume(tmp_path / "quick.nii.gz")
    long_body = make_small_volume(tmp_path / "long.nii.gz", (48, 48, 12)).path.read_bytes()
    server = _embedded(serve, storage, tiny_bundle)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # A job that fails on the worker: its input vanishes from storage while it waits.
        finished = _submit(http, long_body, ensemble=4, steps=40)
        failed = _submit(http, quick.path.read_bytes(), seed=3)
        (storage / "jobs" / failed / "input.nii").unlink()
        assert wait_status(http, finished, ENDED, 60)["status"] == "finished"
        failed_before = wait_status(http, failed, ENDED, 60)
        assert failed_before["status"] == "failed" and "missing" in failed_before["error"], failed_before
        running = _submit(http, long_body, **LONG)
        wait_status(http, running, {"started"}, 60)
        queued = _submit(http, quick.path.read_bytes(), seed=1)
        canceled = _submit(http, quick.path.read_bytes(), seed=2)
        assert http.delete(f"/jobs/{canceled}").json()["status"] == "canceled"
        assert http.get(f"/jobs/{queued}").json()["status"] == "queued"
    server.proc.send_signal(signal.SIGKILL)  # no shutdown of any kind
    server.proc.wait(10)

    restarted = _embedded(serve, storage, tiny_bundle)
    with httpx.Client(base_url=restarted.url, timeout=30) as http:
        states = {job_id: http.get(f"/jobs/{job_id}") for job_id in (finished, failed, running, queued, canceled)}
        assert all(r.status_code == 200 for r in states.values()), {k: r.text for k, r in states.items()}
        assert states[finished].json()["status"] == "finished"
        assert http.get(f"/jobs/{finished}/results/liver_mean.nii.gz").status_code == 200
        assert states[failed].json()["status"] == "failed"
        assert states[failed].json()["error"] == failed_before["error"]
        assert states[canceled].json()["status"] == "canceled"
        # The job the process was running when it died ends failed with the reason, as a job
        # whose RQ worker was killed does: never silently re-run (a job that kills the process
        # would otherwise kill it again at every restart).
        was_running = wait_status(http, running, ENDED, 30)
        assert was_running["status"] == "failed", was_running
        assert "stopped while this job ran" in was_running["error"], was_running
        assert http.get(f"/jobs/{running}/results").status_code == 409
        # The job still waiting in the dead process's queue runs now.
        assert wait_status(http, queued, ENDED, 60)["status"] == "finished"
        wait_until(lambda: not _temp_dirs(storage, running), 10, "the dead run's temp dir removed")
        # And the failed one may be submitted again.
        again = http.post("/segment", params={**CHEAP, **LONG}, content=long_body)
        assert again.status_code == 202 and again.json()["duplicate"] is False, again.text
        assert http.delete(f"/jobs/{again.json()['job_id']}").status_code in (200, 202)
