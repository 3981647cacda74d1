"""Redis restarts under a running API and worker: a private redis-server (append-only file in a
temp dir) that the tests SIGKILL and start again, or lose entirely."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import LATENTSEG, clean_env, wait_until
from tests.reliability.conftest import QUICK, PrivateRedis, rq_env, wait_status
from worker.contracts import record_key

pytestmark = pytest.mark.slow


def _submit(http: httpx.Client, path: Path, **params: object) -> str:
    response = http.post("/segment", params={"targets": "liver", **QUICK, **params}, content=path.read_bytes())
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _timed(call) -> tuple[httpx.Response, float]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_jobs_survive_a_redis_kill_the_api_answers_503_quickly_and_recovers(
    private_redis: PrivateRedis, serve, work, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    server = serve(rq_env(private_redis.url, storage))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        accepted = [_submit(http, quick_volume, seed=s) for s in range(2)]
        time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
        private_redis.kill()

        status, took = _timed(lambda: http.get(f"/jobs/{accepted[0]}"))
        assert status.status_code == 503 and status.headers["retry-after"] and took < 5
        posted, took = _timed(lambda: http.post("/segment?targets=liver", content=quick_volume.read_bytes()))
        assert posted.status_code == 503 and took < 5
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 503 and "redis unreachable" in ready.json()["problems"][0]

        private_redis.start()  # same port, same append-only file
        wait_until(lambda: http.get(f"/jobs/{accepted[0]}").status_code == 200, 20, "API recovered by itself")
        for job_id in accepted:
            assert http.get(f"/jobs/{job_id}").json()["status"] == "queued"

        # A worker idle through a second outage reconnects by itself and runs everything.
        work(private_redis.url, "rel", storage)
        private_redis.kill()
        time.sleep(1.0)
        private_redis.start()
        late = _submit(http, quick_volume, seed=9)
        for job_id in [*accepted, late]:
            final = wait_status(http, job_id, {"finished", "failed"}, 120)
            assert final["status"] == "finished", final
        assert http.get("/readyz").json()["workers"] == 1


def test_a_job_running_through_an_outage_longer_than_its_heartbeat_ttl_is_not_declared_dead(
    private_redis: PrivateRedis, serve, work, long_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    work(private_redis.url, "rel", storage, heartbeat_s=1.0)  # the job's alive key lives 3 s
    server = serve(rq_env(private_redis.url, storage))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job_id = _submit_long(http, long_volume)
        wait_status(http, job_id, {"started"}, 60)
        private_redis.kill()
        time.sleep(4.0)  # the key's expiry passes while Redis is down; the worker keeps computing
        private_redis.start()
        # Read at once, before the worker's next beat: a missing key is not yet evidence of death.
        assert http.get(f"/jobs/{job_id}").json()["status"] == "started"
        time.sleep(4.0)  # past one TTL of uptime: the worker has beaten again and is judged alive
        assert http.get(f"/jobs/{job_id}").json()["status"] == "started"
        final = wait_status(http, job_id, {"finished", "failed"}, 240)
        assert final["status"] == "finished", final


def test_a_worker_that_loses_redis_while_it_starts_waits_for_it_and_then_serves(
    private_redis: PrivateRedis, serve, work, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """RQ retries a lost Redis only while it waits for a job; anywhere else (start-up, registry
    maintenance, the bookkeeping around a job) the error used to end the worker process."""
    storage = tmp_path / "storage"
    worker = work(private_redis.url, "rel", storage, registered=False)
    # Its first ping is answered before it loads the bundle (seconds); freeze it there, take Redis away,
    # and let it go on: its next command (publishing the bundle it serves) meets a dead Redis. (Waiting for the
    # log line, not for Redis to have seen the ping: on a busy CPU Redis can die before its answer is sent.)
    deadline = time.monotonic() + 60
    while "Redis answered" not in worker.log():
        assert time.monotonic() < deadline and worker.proc.poll() is None, worker.log()
        time.sleep(0.01)
    worker.proc.send_signal(signal.SIGSTOP)
    assert "loaded bundle" not in worker.log()
    private_redis.kill()
    worker.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: "Redis unreachable" in worker.log(), 90, "the worker noticed the outage", worker)
    assert worker.proc.poll() is None, worker.log()
    private_redis.start()
    server = serve(rq_env(private_redis.url, storage))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job_id = _submit(http, quick_volume)
        final = wait_status(http, job_id, {"finished", "failed"}, 120)
        assert final["status"] == "finished", final
        wait_until(lambda: http.get("/readyz").json()["workers"] == 1, 30, "the worker counts as live")


def _submit_long(http: httpx.Client, path: Path) -> str:
    response = http.post("/segment", params={"targets": "liver", "ensemble": 8, "steps": 1000}, content=path.read_bytes())
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_a_redis_that_lost_everything_is_rebuilt_from_storage_at_start_up(
    private_redis: PrivateRedis, serve, work, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    server = serve(rq_env(private_redis.url, storage))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        accepted = [_submit(http, quick_volume, seed=s) for s in range(2)]
    server.stop()
    private_redis.wipe()  # the volume is gone: no records, no queue
    private_redis.start()
    connection = redis.Redis.from_url(private_redis.url)
    assert connection.dbsize() == 0

    # Start-up reconciliation re-creates the records and re-enqueues the jobs; nobody polls.
    serve(rq_env(private_redis.url, storage))
    wait_until(lambda: all(connection.exists(record_key("rel", j)) for j in accepted), 20, "records rebuilt")
    work(private_redis.url, "rel", storage)

    def finished() -> bool:
        raw = [connection.hget(record_key("rel", j), "status") for j in accepted]
        return raw == [b'"finished"'] * len(accepted)

    wait_until(finished, 120, "rebuilt jobs finished")


def _worker_check(redis_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LATENTSEG, "worker", "--check", "--redis-url", redis_url, "--queue", "rel"],
        env=clean_env(), capture_output=True, text=True, timeout=60,
    )


def test_after_redis_loses_its_data_readiness_returns_within_a_heartbeat_and_a_kill_9_loses_no_job(
    private_redis: PrivateRedis, serve, work, quick_volume: Path, long_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Workers used to register and publish their bundle only at start: after FLUSHALL /readyz
    stayed 503 ("no live worker") and `latentseg worker --check` exited 1 until a restart.

    Then appendonly yes, appendfsync everysec (the fixture's and the compose file's settings): a
    SIGKILL may lose the last second of writes. Jobs accepted right before it, one running and
    some just finished, all end finished; none is lost (404) or left queued/started."""
    storage = tmp_path / "storage"
    work(private_redis.url, "rel", storage, heartbeat_s=1.0)
    server = serve(rq_env(private_redis.url, storage, LATENTSEG_RECONCILE_INTERVAL_S="1"))
    connection = redis.Redis.from_url(private_redis.url)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        wait_until(lambda: http.get("/readyz").status_code == 200, 20, "ready before the loss")
        assert _worker_check(private_redis.url).returncode == 0
        connection.flushall()
        lost = time.monotonic()
        wait_until(lambda: http.get("/readyz").status_code == 200, 10, "ready again after FLUSHALL")
        recovered_s = time.monotonic() - lost
        ready = http.get("/readyz").json()
        assert ready["workers"] == 1 and ready["bundle"]["name"] == "random-tiny", ready
        check = _worker_check(private_redis.url)
        assert check.returncode == 0, check.stderr
        print(f"/readyz 200 again {recovered_s:.2f} s after FLUSHALL (heartbeat 1 s)")

        running = _submit(http, long_volume, ensemble=8, steps=60)
        accepted = [running] + [_submit(http, quick_volume, seed=s) for s in range(4)]
        wait_status(http, running, {"started", "finished"}, 60)
        private_redis.kill()  # no pause: the last second of writes may be gone
        time.sleep(1.0)
        private_redis.start()
        restarted = time.monotonic()
        wait_until(lambda: http.get("/readyz").status_code == 200, 20, "ready after the restart")
        ready_s = time.monotonic() - restarted
        states = {job_id: wait_status(http, job_id, {"finished", "failed", "canceled"}, 180) for job_id in accepted}
        assert {s["status"] for s in states.values()} == {"finished"}, states
        print(f"kill -9 with AOF: ready {ready_s:.2f} s after the restart, {len(accepted)}/{len(accepted)} jobs finished")
