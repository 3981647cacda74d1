"""Endings survive Redis losing its data: a finished, a failed (with its reason), a job canceled
while queued and one canceled while running all come back as they ended after ``FLUSHALL`` and
an API restart; none is run again (private Redis, real API and worker processes)."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from tests.conftest import wait_until
from tests.reliability.conftest import LONG, QUICK, PrivateRedis, rq_env, wait_status
from worker.contracts import record_key

pytestmark = pytest.mark.slow


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _submit(http: httpx.Client, path: Path, params: dict, **extra: object) -> str:
    response = http.post("/segment", params={"targets": "liver", **params, **extra}, content=path.read_bytes())
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_finished_failed_and_canceled_jobs_come_back_as_they_ended_after_flushall(
    private_redis: PrivateRedis, serve, work, quick_volume: Path, long_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    env = rq_env(private_redis.url, storage, LATENTSEG_JOB_TIMEOUT_S="4")  # the long job times out
    server = serve(env)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        finished = _submit(http, quick_volume, QUICK)
        # The heaviest request the settings allow runs far past the 4 s job timeout even on a fast machine
        # (LONG alone finished inside 4 s once the machine got faster).
        failed = _submit(http, long_volume, {"ensemble": 32, "steps": 1000})
        canceled_running = _submit(http, long_volume, LONG, seed=1)
        canceled_queued = _submit(http, quick_volume, QUICK, seed=2)
        assert http.delete(f"/jobs/{canceled_queued}").json()["status"] == "canceled"

        worker = work(private_redis.url, "rel", storage, heartbeat_s=1.0)
        wait_status(http, canceled_running, {"started"}, 60)
        assert http.delete(f"/jobs/{canceled_running}").status_code == 202
        before = {
            job_id: wait_status(http, job_id, {"finished", "failed", "canceled"}, 60)
            for job_id in (finished, failed, canceled_running, canceled_queued)
        }
        assert [before[j]["status"] for j in (finished, failed, canceled_running, canceled_queued)] == [
            "finished", "failed", "canceled", "canceled"
        ], before
        assert before[failed]["error"].startswith("timed out"), before[failed]
        for job_id, state in before.items():  # the manifest on storage says how each ended
            manifest = json.loads((storage / "jobs" / job_id / "job.json").read_text())
            assert manifest["record"]["status"] == state["status"], manifest
            assert manifest["record"]["error"] == state["error"]
        result_names = {f["name"] for f in http.get(f"/jobs/{finished}/results").json()["files"]}

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(15) == 0
    server.stop()
    connection = redis.Redis.from_url(private_redis.url)
    connection.flushall()
    assert connection.dbsize() == 0

    server = serve(env)  # start-up reconciliation reads every manifest
    queue = Queue("rel", connection=connection, serializer=JSONSerializer)
    started = time.monotonic()
    wait_until(lambda: all(connection.exists(record_key("rel", j)) for j in before), 20, "records rebuilt")
    print(f"records rebuilt {time.monotonic() - started:.2f} s after the API started")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for job_id, state in before.items():
            after = http.get(f"/jobs/{job_id}").json()
            for name in ("status", "error", "progress", "targets", "bundle"):
                assert after[name] == state[name], (name, after, state)
            # The worker stamps its manifest copy at the same moment as the Redis record (a few ms).
            for name in ("started_at", "finished_at"):
                assert (after[name] is None) == (state[name] is None), (name, after, state)
                if state[name] is not None:
                    assert abs(_seconds(after[name]) - _seconds(state[name])) < 1.0, (name, after, state)
        assert {f["name"] for f in http.get(f"/jobs/{finished}/results").json()["files"]} == result_names
        assert http.get(f"/jobs/{failed}/results").status_code == 409
        assert queue.count == 0  # nothing was enqueued again
        # A duplicate of the finished job is answered with it, as before the loss.
        again = http.post("/segment", params={"targets": "liver", **QUICK}, content=quick_volume.read_bytes())
        assert again.status_code == 200 and again.json()["job_id"] == finished, again.text
        # Deleting a canceled job still removes what is left of it.
        assert http.delete(f"/jobs/{canceled_queued}").status_code == 204
        assert not (storage / "jobs" / canceled_queued).exists()
        assert http.get(f"/jobs/{canceled_queued}").status_code == 404
