"""A memory bound per job (issue 17 item 2) with a real worker process, API and private Redis: a
volume whose estimated peak is over LATENTSEG_WORKER_MEMORY_MB fails on the worker before it
allocates (peak RSS stays under the budget) and, once the worker has published its budget, the
API refuses it with 413 naming the limit; a small job under the same budget runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import LATENTSEG, Process, clean_env, spawn, wait_until, write_nifti
from tests.reliability.conftest import QUICK, PrivateRedis, rq_env, unaccepted_job_dirs, wait_status

pytestmark = pytest.mark.slow

BUDGET_MB = 2500


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


@pytest.fixture
def worker_with_budget(tmp_path: Path, tiny_bundle: Path) -> Iterator[Callable[[str, Path], Process]]:
    started: list[Process] = []

    def start(redis_url: str, storage: Path) -> Process:
        log_path = tmp_path / "worker.log"
        cmd = [
            LATENTSEG, "worker", "--redis-url", redis_url, "--queue", "rel", "--storage-dir", str(storage),
            "--device", "cpu", "--name", "mem-worker", "--bundle", str(tiny_bundle),
        ]
        env = clean_env(LATENTSEG_HEARTBEAT_S="1", OMP_NUM_THREADS="1", LATENTSEG_WORKER_MEMORY_MB=str(BUDGET_MB))
        process = Process(spawn(cmd, env, log_path), log_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(timeout_s=20.0)


def test_an_over_budget_volume_is_refused_by_the_worker_then_by_the_api_with_413(
    private_redis: PrivateRedis, serve, worker_with_budget, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    # 512x512x256 int16 at 0.7 mm: 134 MB of voxels (a 0.3 MB gzip), estimated near 3 GB of peak.
    big = write_nifti(tmp_path / "big.nii.gz", np.full((512, 512, 256), -1000, np.int16), np.diag([0.7, 0.7, 0.7, 1.0]))
    server = serve(rq_env(private_redis.url, storage))
    with httpx.Client(base_url=server.url, timeout=120) as http:
        # No worker has published a budget yet: the API accepts both.
        quick = http.post("/segment", params={"targets": "liver", **QUICK}, content=quick_volume.read_bytes())
        heavy = http.post("/segment", params={"targets": "liver", **QUICK}, content=big.read_bytes())
        assert quick.status_code == 202 and heavy.status_code == 202, (quick.text, heavy.text)

        worker = worker_with_budget(private_redis.url, storage)
        assert wait_status(http, quick.json()["job_id"], {"finished", "failed"}, 120)["status"] == "finished"
        refused = wait_status(http, heavy.json()["job_id"], {"finished", "failed"}, 120)
        assert refused["status"] == "failed", refused
        assert refused["error"].startswith("too large for this worker's memory"), refused
        assert f"{BUDGET_MB:,} MB" in refused["error"] and "LATENTSEG_WORKER_MEMORY_MB" in refused["error"]
        peak_mb = _peak_rss_mb(worker.proc.pid)
        assert peak_mb < BUDGET_MB, peak_mb
        print(f"worker peak RSS {peak_mb:.0f} MB with a {BUDGET_MB} MB budget; refused: {refused['error']}")

        # The worker's budget is published: the API now refuses the same upload itself, naming it.
        def refused_by_api() -> bool:
            again = http.post("/segment", params={"targets": "liver", **QUICK, "seed": 3}, content=big.read_bytes())
            if again.status_code == 202:  # not published yet: let the worker refuse it
                return False
            assert again.status_code == 413, again.text
            assert f"{BUDGET_MB:,} MB" in again.text and "every worker's" in again.text, again.text
            return True

        wait_until(refused_by_api, 30, "API refuses an over-budget upload")
        assert unaccepted_job_dirs(storage) == []  # nothing of the refused upload is left
        small = http.post("/segment", params={"targets": "liver", **QUICK, "seed": 4}, content=quick_volume.read_bytes())
        assert small.status_code == 202, small.text


def test_embedded_mode_refuses_an_over_budget_upload_with_413_once_its_bundle_is_loaded(
    serve, tiny_bundle: Path, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    big = write_nifti(tmp_path / "big.nii.gz", np.full((512, 512, 256), -1000, np.int16), np.diag([0.7, 0.7, 0.7, 1.0]))
    server = serve({
        "LATENTSEG_STORAGE_DIR": str(tmp_path / "storage"), "LATENTSEG_BUNDLE": str(tiny_bundle),
        "LATENTSEG_DEVICE": "cpu", "LATENTSEG_WORKER_MEMORY_MB": str(BUDGET_MB), "OMP_NUM_THREADS": "1",
    })
    with httpx.Client(base_url=server.url, timeout=120) as http:
        wait_until(lambda: http.get("/readyz").status_code == 200, 90, "embedded bundle loaded", server)
        refused = http.post("/segment", params={"targets": "liver", **QUICK}, content=big.read_bytes())
        assert refused.status_code == 413, refused.text
        assert f"{BUDGET_MB:,} MB" in refused.text and "LATENTSEG_WORKER_MEMORY_MB" in refused.text
        small = http.post("/segment", params={"targets": "liver", **QUICK}, content=quick_volume.read_bytes())
        assert small.status_code == 202, small.text
        assert wait_status(http, small.json()["job_id"], {"finished", "failed"}, 120)["status"] == "finished"
