"""Fixtures for the reliability suite: a private redis-server that tests kill and restart, API
keys, and servers/workers pointed at it.

The private Redis runs on a free port with ``appendonly yes`` in a temp directory (like the
compose file), so a test can SIGKILL it, restart it on the same data and watch the service
recover. Nothing here touches the shared Redis at 6379.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.auth import hash_api_key
from tests.conftest import (
    LATENTSEG,
    Process,
    clean_env,
    find_free_port,
    launch_server,
    make_small_volume,
    spawn,
    wait_until,
)

REDIS_SERVER = shutil.which("redis-server")
ALICE_KEY = "alice-" + "a1" * 20
BOB_KEY = "bob-" + "b2" * 20
# Volumes and job sizes that keep a job short ("quick") or running for many seconds ("long")
# with the tiny random bundle on a 2-core machine.
QUICK = {"ensemble": 2, "steps": 2}
LONG = {"ensemble": 8, "steps": 400}


@dataclass
class PrivateRedis:
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--maxmemory-policy", "noeviction", "--protected-mode", "no",
            ],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
            except redis.exceptions.RedisError:
                return False

        wait_until(up, 20, "private redis-server answers")

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the append-only file has."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def wipe(self) -> None:
        """Lose everything (a Redis whose volume was lost)."""
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(port=find_free_port(), directory=tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api_keys"
    path.write_text(f"# name sha256\nalice {hash_api_key(ALICE_KEY)}\nbob {hash_api_key(BOB_KEY)}\n")
    return path


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def quick_volume(tmp_path: Path) -> Path:
    return make_small_volume(tmp_path / "quick.nii.gz", (32, 32, 8)).path


@pytest.fixture
def long_volume(tmp_path: Path) -> Path:
    return make_small_volume(tmp_path / "long.nii.gz", (48, 48, 12)).path


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start ``latentseg serve`` with exactly ``env`` as its latentseg configuration."""
    started: list[Process] = []

    def start(env: dict[str, str], timeout_s: float = 60.0, port: int | None = None) -> Process:
        log_path = tmp_path / f"serve-{port or len(started)}-{time.monotonic_ns() % 10**8}.log"
        process = launch_server(clean_env(**env), log_path, port=port, timeout_s=timeout_s)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def work(tmp_path: Path, tiny_bundle: Path) -> Iterator[Callable[..., Process]]:
    """Start ``latentseg worker`` (tiny bundle, CPU) and wait until it is registered (unless told not to)."""
    started: list[Process] = []

    def start(
        redis_url: str, queue: str, storage: Path, heartbeat_s: float = 1.0, timeout_s: float = 90.0,
        registered: bool = True,
    ) -> Process:
        import redis
        from rq import Queue, Worker

        name = f"w-{len(started)}-{time.monotonic_ns() % 10**8}"
        log_path = tmp_path / f"{name}.log"
        cmd = [
            LATENTSEG, "worker", "--redis-url", redis_url, "--queue", queue, "--storage-dir", str(storage),
            "--device", "cpu", "--name", name, "--bundle", str(tiny_bundle),
        ]
        env = clean_env(LATENTSEG_HEARTBEAT_S=str(heartbeat_s), OMP_NUM_THREADS="1")
        process = Process(spawn(cmd, env, log_path, append=True), log_path, extra={"name": name})
        started.append(process)
        if not registered:
            return process
        connection = redis.Redis.from_url(redis_url)
        wait_until(
            lambda: any(w.name == name for w in Worker.all(queue=Queue(queue, connection=connection))),
            timeout_s, "worker registered", process,
        )
        return process

    yield start
    for process in started:
        process.stop(timeout_s=20.0)


def rq_env(redis_url: str, storage: Path, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "LATENTSEG_QUEUE": "rel", "LATENTSEG_STORAGE_DIR": str(storage), **extra}


def wait_status(http: httpx.Client, job_id: str, wanted: set[str], timeout_s: float, headers: dict[str, str] | None = None) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        response = http.get(f"/jobs/{job_id}", headers=headers)
        if response.status_code == 200 and response.json()["status"] in wanted:
            return response.json()
        assert time.monotonic() < deadline, f"job {job_id} not in {wanted} after {timeout_s} s: {response.text}"
        time.sleep(0.2)


def post_liver(http: httpx.Client, body: bytes, **params: object) -> httpx.Response:
    """``POST /segment?targets=liver`` with ``body`` as the raw request body."""
    return http.post("/segment", params={"targets": "liver", **params}, content=body)


def unaccepted_job_dirs(storage: Path) -> list[str]:
    """Job directories without an accepted job's record: anything a refusal left behind."""
    jobs = storage / "jobs"
    return [p.name for p in jobs.iterdir() if not (p / "job.json").exists()] if jobs.exists() else []


def rq_api_server(redis_url: str, root: Path, queue: str, log_level: str | None = None, **settings: str) -> Process:
    """``latentseg serve`` in RQ mode (no worker) on ``queue``, storage under ``root``; ``settings`` are
    LATENTSEG_* variables. ``process.extra`` holds the queue and the storage path."""
    env = clean_env(REDIS_URL=redis_url, LATENTSEG_QUEUE=queue, LATENTSEG_STORAGE_DIR=str(root / "storage"), **settings)
    args = ["--log-level", log_level] if log_level else []
    process = launch_server(env, root / "serve.log", args=args)
    process.extra.update(queue=queue, storage=str(root / "storage"))
    return process
