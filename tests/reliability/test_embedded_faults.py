"""Embedded mode (``latentseg serve`` without Redis) under the faults the RQ tests apply: the process
SIGKILLed mid-job and restarted on the same storage (then a running job cancelled), and a full
storage volume. Real server processes, real HTTP, the tiny random bundle.

(The memory budget in embedded mode: ``test_worker_memory.py::
test_embedded_mode_refuses_an_over_budget_upload_with_413_once_its_bundle_is_loaded``; the
embedded job timeout: ``test_faults.py``.)
"""

from __future__ import annotations

import json
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
        # A job that fails on the worker: its input vanishes from storage while it waits behind a running job
        # (long enough that the second upload, checked in a child process, is queued before it ends on a busy CPU).
        finished = _submit(http, long_body, ensemble=2, steps=100)
        assert wait_status(http, finished, {"started"} | ENDED, 60)["status"] == "started"
        failed = _submit(http, quick.path.read_bytes(), seed=3)
        (storage / "jobs" / failed / "input.nii").unlink()
        assert wait_status(http, finished, ENDED, 120)["status"] == "finished"
        failed_before = wait_status(http, failed, ENDED, 60)
        # the worker finds the input gone before it opens it ("missing") or while it opens it ("no such file"; the
        # OS's "No such file or directory" when it vanishes between opening the header and reading the voxels)
        reason = failed_before["error"].lower()
        assert failed_before["status"] == "failed" and ("missing" in reason or "no such file" in reason), failed_before
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
        # The failed one may be submitted again; cancelled while it runs, it stops and leaves nothing.
        again = http.post("/segment", params={**CHEAP, **LONG}, content=long_body)
        assert again.status_code == 202 and again.json()["duplicate"] is False, again.text
        again_id = again.json()["job_id"]
        wait_status(http, again_id, {"started"}, 60)
        assert http.delete(f"/jobs/{again_id}").status_code == 202
        state = wait_status(http, again_id, ENDED, 30)
        assert state["status"] == "canceled" and state["error"] == "canceled by the client while running", state
        assert http.get(f"/jobs/{again_id}/results").status_code == 409
        assert not (storage / "jobs" / again_id / "results").exists() and not _temp_dirs(storage, again_id)
        assert json.loads((storage / "jobs" / again_id / "job.json").read_text())["record"]["status"] == "canceled"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (as in test_storage_full.py); skips where mounting is not allowed."""
    mount = shutil.which("mount")
    point = tmp_path / "small-fs"
    point.mkdir()
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root and mount(8)")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(point: Path) -> Path:
    """Write zeros (unbuffered) until the volume says it is full."""
    filler = point / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, bytes(4096)) > 0:
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_in_embedded_mode_gives_507_fails_the_job_as_storage_full_and_leaves_nothing(
    serve, tiny_bundle: Path, small_fs: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = small_fs / "storage"
    server = _embedded(serve, storage, tiny_bundle)
    quick = make_small_volume(tmp_path / "quick.nii.gz").path.read_bytes()
    long_body = make_small_volume(tmp_path / "long.nii.gz", (48, 48, 12)).path.read_bytes()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        running = _submit(http, long_body, **LONG)
        wait_status(http, running, {"started"}, 60)
        waiting = _submit(http, quick)  # accepted while there is room; runs once the disk is full
        filler = _fill(small_fs)
        refused = http.post("/segment", params={**CHEAP, "seed": 7}, content=quick)
        assert refused.status_code == 507, refused.text
        assert refused.json()["detail"].startswith("storage full") and int(refused.headers["retry-after"]) > 0
        assert sorted(p.name for p in (storage / "jobs").iterdir()) == sorted([running, waiting])  # nothing kept

        assert http.delete(f"/jobs/{running}").status_code == 202  # the worker thread moves on to `waiting`
        state = wait_status(http, waiting, ENDED, 60)
        assert state["status"] == "failed" and state["error"].startswith("storage full"), state
        # (Its progress may read 100 here: this tiny job's pipeline reports 100 % before the
        # outputs are written; the reason says how far it got.)
        assert "the job had reached" in state["error"], state
        assert not (storage / "jobs" / waiting / "results").exists() and not _temp_dirs(storage, waiting)

        filler.unlink()  # room again: the same upload is taken and runs
        again = _submit(http, quick, seed=8)
        assert wait_status(http, again, ENDED, 60)["status"] == "finished"
