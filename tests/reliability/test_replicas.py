"""Two API replicas behind one Redis, the scale-out of docs/deploy.md: two real ``latentseg serve``
processes in RQ mode with the same ``REDIS_URL``, ``LATENTSEG_QUEUE`` and storage directory, and
one real ``latentseg worker``.

Jobs submitted alternately on A and B each run exactly once (one "started" and one "finished"
line in the worker's log, one record, one manifest, one result directory), and every job is
visible, fetchable and cancellable through the other replica: a cancellation made on B (of a
queued job and of a running one) is what A reports and what the worker acts on.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import make_small_volume
from tests.reliability.conftest import LONG, wait_status

pytestmark = pytest.mark.slow

QUICK_JOBS = 6
CHEAP = {"targets": "liver", "ensemble": 1, "steps": 2}


def _submit(http: httpx.Client, body: bytes, **params: object) -> str:
    response = http.post("/segment", params={**CHEAP, **params}, content=body)
    assert response.status_code == 202, response.text
    assert response.json()["duplicate"] is False
    return str(response.json()["job_id"])


def _worker_lines(log: str, job_id: str, what: str) -> int:
    return len(re.findall(rf"job {job_id}: {what}\b", log))


def test_jobs_alternating_between_two_replicas_run_once_and_either_replica_sees_and_cancels_them(
    redis_url: str, rq_queue_name: str, serve, work, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    worker = work(redis_url, rq_queue_name, storage)
    env = {"REDIS_URL": redis_url, "LATENTSEG_QUEUE": rq_queue_name, "LATENTSEG_STORAGE_DIR": str(storage)}
    replica_a, replica_b = serve(env), serve(env)
    quick = make_small_volume(tmp_path / "quick.nii.gz", (32, 32, 8)).path.read_bytes()
    long_body = make_small_volume(tmp_path / "long.nii.gz", (48, 48, 12)).path.read_bytes()
    with httpx.Client(base_url=replica_a.url, timeout=30) as a, httpx.Client(base_url=replica_b.url, timeout=30) as b:
        # A long job on A keeps the worker busy, so the job submitted next on A is still queued
        # when B cancels it.
        running = _submit(a, long_body, **LONG)
        assert wait_status(b, running, {"started"}, 60)["status"] == "started"  # A's job, seen on B
        queued = _submit(a, quick, seed=999)
        assert b.get(f"/jobs/{queued}").json()["status"] == "queued"
        canceled = b.delete(f"/jobs/{queued}")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
        assert a.get(f"/jobs/{queued}").json()["status"] == "canceled"  # B's cancellation, seen on A

        # Quick jobs alternating A, B, A, ... while the long one runs.
        submitted: dict[str, httpx.Client] = {}
        for i in range(QUICK_JOBS):
            http = (a, b)[i % 2]
            submitted[_submit(http, gzip.compress(gzip.decompress(quick), mtime=i), seed=i)] = http

        # The running job, cancelled on B: A sees it canceled and the worker stops it.
        assert b.delete(f"/jobs/{running}").status_code == 202
        ended = wait_status(a, running, {"canceled", "finished", "failed"}, 60)
        assert ended["status"] == "canceled", ended

        for job_id, origin in submitted.items():
            other = b if origin is a else a
            state = wait_status(other, job_id, {"finished", "failed", "canceled"}, 90)
            assert state["status"] == "finished", state
            files = other.get(f"/jobs/{job_id}/results").json()["files"]
            assert {"liver_mean.nii.gz", "labels.nii.gz"} <= {f["name"] for f in files}
            assert other.get(f"/jobs/{job_id}/results/liver_mean.nii.gz").status_code == 200
            assert origin.get(f"/jobs/{job_id}/results.zip").status_code == 200

        every = [running, queued, *submitted]
        listed_a = {job_id: a.get(f"/jobs/{job_id}").json() for job_id in every}
        listed_b = {job_id: b.get(f"/jobs/{job_id}").json() for job_id in every}
        for job_id in every:  # both replicas tell the same story
            assert {k: v for k, v in listed_a[job_id].items() if k != "position"} == {
                k: v for k, v in listed_b[job_id].items() if k != "position"
            }

    log = worker.log_path.read_text(errors="replace")
    for job_id in submitted:  # the worker ran each once
        assert _worker_lines(log, job_id, "started") == 1, job_id
        assert _worker_lines(log, job_id, "finished") == 1, job_id
        assert listed_a[job_id]["started_at"] is not None
    assert _worker_lines(log, running, "started") == 1
    assert _worker_lines(log, running, "canceled by the client while running") == 1  # the worker acted on B's cancel
    assert _worker_lines(log, queued, "started") == 0  # canceled on B while queued: never run

    # Exactly one record, one manifest and one result directory per job; nothing else.
    connection = redis.Redis.from_url(redis_url)
    records = {key.decode().rsplit(":", 1)[1] for key in connection.scan_iter(f"latentseg:{rq_queue_name}:job:*")}
    assert records == set(every)
    jobs_dir = storage / "jobs"
    assert {p.name for p in jobs_dir.iterdir()} == set(every)
    for job_id in submitted:
        manifest = json.loads((jobs_dir / job_id / "job.json").read_text())
        assert manifest["record"]["status"] == "finished"
        assert manifest["record"]["started_at"] is not None
        assert [p.name for p in (jobs_dir / job_id).iterdir() if p.name.startswith(("results", ".results"))] == [
            "results"
        ]
    assert json.loads((jobs_dir / running / "job.json").read_text())["record"]["status"] == "canceled"
    assert json.loads((jobs_dir / queued / "job.json").read_text())["record"]["status"] == "canceled"
    assert not (jobs_dir / running / "results").exists()
