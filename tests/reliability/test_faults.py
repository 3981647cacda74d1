"""Faults with real worker processes, a private Redis and real HTTP: killed and stopped workers,
cancelling running jobs, the DELETE vs pick-up race, the embedded job timeout, duplicate work."""

from __future__ import annotations

import gzip
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.conftest import make_small_volume, wait_until
from tests.reliability.conftest import LONG, QUICK, PrivateRedis, rq_env, wait_status

MEDIUM = {"ensemble": 8, "steps": 60}  # several seconds: long enough to be caught running
from tests.reliability.hostile import EXTENSION_TEXT, PRIVATE, gz, nifti_bytes

pytestmark = pytest.mark.slow


def _submit(http: httpx.Client, path_or_bytes: Path | bytes, params: dict, **extra: object) -> str:
    body = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    response = http.post("/segment", params={"targets": "liver", **params, **extra}, content=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_sigkilled_worker_fails_its_job_with_the_reason_and_leaves_no_partial_result(
    private_redis: PrivateRedis, serve, work, long_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    worker = work(private_redis.url, "rel", storage, heartbeat_s=1.0)
    server = serve(rq_env(private_redis.url, storage, LATENTSEG_RECONCILE_INTERVAL_S="1"))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job_id = _submit(http, long_volume, LONG)
        wait_status(http, job_id, {"started"}, 60)
        wait_until(lambda: any((storage / "jobs" / job_id).glob(".results-*")), 30, "worker writing its temp dir")
        worker.proc.send_signal(signal.SIGKILL)  # what the OOM killer does
        worker.proc.wait(10)

        state = wait_status(http, job_id, {"failed"}, 20)
        assert "worker running this job stopped" in state["error"]
        assert http.get(f"/jobs/{job_id}/results").status_code == 409
        assert not (storage / "jobs" / job_id / "results").exists()
        assert not list((storage / "jobs" / job_id).glob(".results-*"))  # the dead worker's temp dir is gone
        # and readiness says so once the dead worker's alive key lapses (3 heartbeats; the job's own key may
        # lapse first, so the job can be failed a moment before the worker drops out of the count)
        wait_until(lambda: http.get("/readyz").json()["workers"] == 0, 10, "readiness dropping the killed worker")


def test_sigterm_finishes_the_running_job_then_the_worker_exits(
    private_redis: PrivateRedis, serve, work, long_volume: Path, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    worker = work(private_redis.url, "rel", storage)
    server = serve(rq_env(private_redis.url, storage))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        running = _submit(http, long_volume, MEDIUM)
        waiting = _submit(http, quick_volume, QUICK)
        wait_status(http, running, {"started"}, 60)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(120) == 0  # the grace period of this test: the job's length
        assert http.get(f"/jobs/{running}").json()["status"] == "finished"
        assert {f["name"] for f in http.get(f"/jobs/{running}/results").json()["files"]} >= {"liver_mean.nii.gz"}
        assert http.get(f"/jobs/{waiting}").json()["status"] == "queued"  # not taken by a stopping worker


def test_cancel_a_running_job_then_a_duplicate_of_a_finished_job_is_not_run_twice_and_outputs_are_clean(
    private_redis: PrivateRedis, serve, work, long_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    worker = work(private_redis.url, "rel", storage, heartbeat_s=0.5)
    server = serve(rq_env(private_redis.url, storage))
    volume = make_small_volume(tmp_path / "v.nii.gz", (32, 32, 8))
    private = gz(nifti_bytes(volume.image, volume.affine, private=True))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job_id = _submit(http, long_volume, LONG)
        wait_status(http, job_id, {"started"}, 60)
        answer = http.delete(f"/jobs/{job_id}")
        assert answer.status_code == 202 and answer.json()["cancel_requested"] is True
        started = time.monotonic()
        state = wait_status(http, job_id, {"canceled", "failed", "finished"}, 30)
        assert state["status"] == "canceled", state
        assert time.monotonic() - started < 15
        assert not (storage / "jobs" / job_id / "results").exists()
        assert not list((storage / "jobs" / job_id).glob(".results-*"))
        assert http.delete(f"/jobs/{job_id}").status_code == 204

        # The worker goes on: a job whose upload carries private header text and an extension.
        done = _submit(http, private, QUICK)
        assert wait_status(http, done, {"finished", "failed"}, 90)["status"] == "finished"
        again = http.post("/segment", params={"targets": "liver", **QUICK}, content=private)
        assert again.status_code == 200 and again.json()["job_id"] == done and again.json()["status"] == "finished"
        files = http.get(f"/jobs/{done}/results").json()["files"]
        outputs = b""
        for item in files:
            content = http.get(item["url"]).content
            outputs += gzip.decompress(content) if item["name"].endswith(".gz") else content
    connection = redis.Redis.from_url(private_redis.url)
    assert Queue("rel", connection=connection).finished_job_registry.get_job_ids() == [done]  # run once
    for secret in (*PRIVATE.values(), EXTENSION_TEXT):
        assert secret not in outputs, secret
        assert secret.decode() not in worker.log() and secret.decode() not in server.log()


def test_delete_wins_over_a_worker_that_already_popped_the_job(
    private_redis: PrivateRedis, serve, work, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    server = serve(rq_env(private_redis.url, storage))
    connection = redis.Redis.from_url(private_redis.url)
    queue = Queue("rel", connection=connection, serializer=JSONSerializer)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job_id = _submit(http, quick_volume, QUICK)
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        assert http.delete(f"/jobs/{job_id}").json()["status"] == "canceled"
        # The race: a worker had popped the id just before the DELETE; it reaches the worker anyway.
        queue.enqueue_job(job)
        assert queue.count == 1
        work(private_redis.url, "rel", storage)
        wait_until(lambda: queue.count == 0 and not queue.started_job_registry.get_job_ids(), 60, "worker took it")
        wait_until(lambda: Job.fetch(job_id, connection=connection, serializer=JSONSerializer).get_status() == "finished",
                   30, "rq job done")
        assert Job.fetch(job_id, connection=connection, serializer=JSONSerializer).return_value()["skipped"] is True
        assert http.get(f"/jobs/{job_id}").json()["status"] == "canceled"
        assert [p.name for p in (storage / "jobs" / job_id).iterdir()] == ["job.json"]  # the ending, no upload


def test_embedded_job_timeout_fails_the_job_and_the_worker_thread_survives(
    serve, tiny_bundle: Path, long_volume: Path, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server = serve({
        "LATENTSEG_STORAGE_DIR": str(tmp_path / "storage"), "LATENTSEG_BUNDLE": str(tiny_bundle),
        "LATENTSEG_JOB_TIMEOUT_S": "10",
    })
    wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 90, "embedded bundle loaded", server)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # The heaviest request the settings allow: far longer than 10 s even on a fast machine
        # (LONG alone finished inside 10 s once the pipeline got faster).
        slow = _submit(http, long_volume, {"ensemble": 32, "steps": 1000})
        started = time.monotonic()
        state = wait_status(http, slow, {"failed", "finished"}, 60)
        assert state["status"] == "failed" and "timed out" in state["error"], state
        assert time.monotonic() - started < 40
        assert not (tmp_path / "storage" / "jobs" / slow / "results").exists()
        quick = _submit(http, quick_volume, QUICK)
        quick_state = wait_status(http, quick, {"finished", "failed"}, 60)
        assert quick_state["status"] == "finished", quick_state.get("error")
