"""Stop signals on a real ``latentseg worker`` process (private Redis, real API): an idle worker
exits at once on SIGTERM or SIGINT, a second SIGTERM (or the stop grace period) fails the running
job with a reason, and the same upload can be submitted again. (A busy worker that finishes its
job on one SIGTERM: tests/reliability/test_faults.py.)"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue, Worker

from tests.conftest import LATENTSEG, Process, clean_env, spawn, wait_until
from tests.reliability.conftest import LONG, PrivateRedis, rq_env, wait_status
from worker.contracts import bundle_info_key, worker_alive_key

pytestmark = pytest.mark.slow


@pytest.fixture
def start_worker(tmp_path: Path, tiny_bundle: Path) -> Iterator[Callable[..., Process]]:
    """``latentseg worker`` (tiny bundle, CPU, 1 s heartbeat) with extra environment; not waited for."""
    started: list[Process] = []

    def start(redis_url: str, storage: Path, **env: str) -> Process:
        name = f"sig-{len(started)}-{time.monotonic_ns() % 10**8}"
        log_path = tmp_path / f"{name}.log"
        cmd = [
            LATENTSEG, "worker", "--redis-url", redis_url, "--queue", "rel", "--storage-dir", str(storage),
            "--device", "cpu", "--name", name, "--bundle", str(tiny_bundle),
        ]
        full_env = clean_env(LATENTSEG_HEARTBEAT_S="1", OMP_NUM_THREADS="1", **env)
        process = Process(spawn(cmd, full_env, log_path), log_path, extra={"name": name})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(timeout_s=20.0)


def _registered(redis_url: str, name: str) -> bool:
    connection = redis.Redis.from_url(redis_url)
    return any(w.name == name for w in Worker.all(queue=Queue("rel", connection=connection)))


def _exit_code_and_seconds(process: Process, sig: signal.Signals, timeout_s: float) -> tuple[int, float]:
    started = time.monotonic()
    process.proc.send_signal(sig)
    code = process.proc.wait(timeout_s)
    return code, time.monotonic() - started


def test_an_idle_worker_exits_0_at_once_on_sigterm_and_on_sigint_and_withdraws_itself(
    private_redis: PrivateRedis, start_worker, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    workers = {sig: start_worker(private_redis.url, storage) for sig in (signal.SIGTERM, signal.SIGINT)}
    connection = redis.Redis.from_url(private_redis.url)
    for worker in workers.values():
        name = worker.extra["name"]
        wait_until(lambda: _registered(private_redis.url, name), 90, "worker registered", worker)
        wait_until(lambda: connection.exists(worker_alive_key("rel", name)) == 1, 10, "worker beating", worker)
    time.sleep(1.5)  # idle in the blocking wait for a job, past a heartbeat
    for sig, worker in workers.items():
        # Before the fix an idle worker restarted its loop and never exited.
        code, took = _exit_code_and_seconds(worker, sig, timeout_s=15)
        assert code == 0, worker.log()
        name = worker.extra["name"]
        assert not _registered(private_redis.url, name)
        assert connection.exists(worker_alive_key("rel", name)) == 0
        assert connection.hexists(bundle_info_key("rel"), name) == 0
        assert "stopping now" in worker.log()
        print(f"idle worker, {sig.name}: exit {code} after {took:.2f} s")


def test_a_second_sigterm_fails_the_running_job_with_a_reason_and_it_can_be_submitted_again(
    private_redis: PrivateRedis, serve, start_worker, long_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    server = serve(rq_env(private_redis.url, storage))
    body = long_volume.read_bytes()
    params = {"targets": "liver", "ensemble": LONG["ensemble"], "steps": 1000}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        posted = http.post("/segment", params=params, content=body)
        assert posted.status_code == 202, posted.text
        job_id = posted.json()["job_id"]
        worker = start_worker(private_redis.url, storage)
        wait_status(http, job_id, {"started"}, 90)
        wait_until(lambda: any((storage / "jobs" / job_id).glob(".results-*")), 30, "worker computing", worker)

        worker.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping once the running job ends" in worker.log(), 10, "first SIGTERM seen", worker)
        assert worker.proc.poll() is None  # a busy worker keeps running its job on the first signal
        code, took = _exit_code_and_seconds(worker, signal.SIGTERM, timeout_s=30)
        assert code == 0, worker.log()
        state = http.get(f"/jobs/{job_id}").json()
        assert state["status"] == "failed", state
        assert state["error"].startswith("stopped: the worker was shut down"), state
        assert http.get(f"/jobs/{job_id}/results").status_code == 409
        assert not (storage / "jobs" / job_id / "results").exists()
        assert not list((storage / "jobs" / job_id).glob(".results-*"))
        print(f"second SIGTERM: job failed, worker exit {code} after {took:.2f} s")

        # The same upload with the same parameters is a new job (a failed job is not a duplicate) ...
        again = http.post("/segment", params=params, content=body)
        assert again.status_code == 202, again.text
        retry_id = again.json()["job_id"]
        assert retry_id != job_id and again.json().get("duplicate") is not True
        # ... that a worker runs; this one has a 1 s stop grace period: one SIGTERM is enough.
        graced = start_worker(private_redis.url, storage, LATENTSEG_STOP_GRACE_S="1")
        wait_status(http, retry_id, {"started"}, 90)
        code, took = _exit_code_and_seconds(graced, signal.SIGTERM, timeout_s=30)
        assert code == 0, graced.log()
        state = http.get(f"/jobs/{retry_id}").json()
        assert state["status"] == "failed" and state["error"].startswith("stopped:"), state
        print(f"one SIGTERM with a 1 s grace period: job failed, worker exit {code} after {took:.2f} s")
