"""Shared fixtures: free ports, an isolated Redis namespace, NIfTI volumes and phantoms, a tiny
random bundle, and real `latentseg serve` / `latentseg worker` subprocesses.

Redis: the tests use the real server at ``LATENTSEG_TEST_REDIS_URL`` (default
redis://127.0.0.1:6379/0, as in CI). Each test gets its own queue name; everything the API and
workers write is namespaced by it (``rq:*:<queue>``, ``latentseg:<queue>:*``) and deleted after
the test. Without a reachable Redis the Redis tests fail, unless
``LATENTSEG_SKIP_REDIS_TESTS=1`` asks to skip them.

Nothing here is autouse and nothing heavy is imported at module level.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Passive OpenMP waiting for the test process and every server/worker it starts, set before any test
    module imports torch (libgomp reads it once, at load): spinning threads made CPU-bound tests up to
    50x slower on a loaded 2-core machine. An explicit value in the environment is kept."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


REPO_ROOT = Path(__file__).resolve().parents[1]
LATENTSEG = str(Path(sys.executable).with_name("latentseg"))
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


def load_script(name: str) -> ModuleType:
    """A script of ``scripts/`` (not a package) loaded as a module, so that tests call its functions."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> int:
    return find_free_port()


# ---------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = os.environ.get("LATENTSEG_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as exc:
        message = f"Redis at {url} is needed for this test and is unreachable ({exc})"
        if os.environ.get("LATENTSEG_SKIP_REDIS_TESTS") == "1":
            pytest.skip(message)
        pytest.fail(message + "; start redis-server or set LATENTSEG_SKIP_REDIS_TESTS=1", pytrace=False)
    return url


def purge_namespace(url: str, queue: str) -> None:
    """Delete everything RQ and latentseg wrote for ``queue`` (jobs, results, registries, records)."""
    import redis

    connection = redis.Redis.from_url(url)
    job_ids = {key.decode().rsplit(":", 1)[1] for key in connection.scan_iter(f"latentseg:{queue}:job:*")}
    keys = set(connection.scan_iter(f"*{queue}*"))
    for job_id in job_ids:
        keys.update(connection.scan_iter(f"rq:*{job_id}*"))
    if keys:
        connection.delete(*keys)
    connection.srem("rq:queues", f"rq:queue:{queue}")
    connection.close()


@pytest.fixture
def rq_queue_name(redis_url: str) -> Iterator[str]:
    """A queue name (and so a Redis key namespace) unique to this test; purged afterwards."""
    name = f"lstest-{uuid.uuid4().hex[:12]}"
    yield name
    purge_namespace(redis_url, name)


# ---------------------------------------------------------------- volumes


@dataclass(frozen=True)
class Volume:
    path: Path
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def make_small_volume(path: Path, shape: tuple[int, int, int] = (32, 32, 8)) -> Volume:
    """A CT-like int16 volume with a bright ellipsoid "liver" (label 1), built with numpy only."""
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    label = (((grid[0] + 0.2) / 0.5) ** 2 + (grid[1] / 0.4) ** 2 + (grid[2] / 0.9) ** 2 <= 1).astype(np.uint8)
    image = np.where(label > 0, 60, -100).astype(np.int16)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = (-20.0, -30.0, 10.0)
    write_nifti(path, image, affine)
    return Volume(path=path, image=image, label=label, affine=affine)


@pytest.fixture
def small_nifti(tmp_path: Path) -> Volume:
    """A small ``.nii.gz`` (no phantom generator needed): for API and validation tests."""
    return make_small_volume(tmp_path / "small.nii.gz")


@pytest.fixture(scope="session")
def phantom_volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """A 96x96x24 abdominal phantom at 3x3x4 mm (``training.synthetic.phantoms``) as ``phantom_case.nii.gz``."""
    from training.synthetic.phantoms import PhantomSpec, generate_phantom

    phantom = generate_phantom(0, PhantomSpec(shape=(96, 96, 24), spacing=(3.0, 3.0, 4.0)))
    path = tmp_path_factory.mktemp("phantom") / "phantom_case.nii.gz"
    write_nifti(path, phantom.image, phantom.affine)
    return Volume(path=path, image=phantom.image, label=phantom.label, affine=phantom.affine)


def phantom_label_value(name: str) -> int:
    from training.synthetic.phantoms import PHANTOM_LABELS

    return dict((n, v) for v, n in PHANTOM_LABELS)[name]


def write_truncated_gzip_nifti(source: Volume, path: Path) -> Path:
    """A ``.nii.gz`` whose header is intact but whose voxel data stops early: passes the API's
    header check, fails when a worker reads the voxels."""
    import gzip

    raw = gzip.decompress(source.path.read_bytes())
    path.write_bytes(gzip.compress(raw[: 352 + 64]))
    return path


# ---------------------------------------------------------------- bundles


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised bundle (outputs are not meaningful; shapes and ranges are)."""
    from model.bundle.loaded import write_random_bundle

    return write_random_bundle(tmp_path_factory.mktemp("bundles") / "tiny", seed=0)


def trained_demo_bundle() -> Path | None:
    """The shipped demo bundle if it exists and its manifest says it was trained, else None."""
    from model.bundle.manifest import demo_bundle_path, read_manifest

    path = demo_bundle_path()
    try:
        manifest = read_manifest(path)
    except Exception:
        return None
    return path if manifest.provenance.get("trained") is True else None


# ---------------------------------------------------------------- subprocesses


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any latentseg/Redis settings, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSEG_") and k != "REDIS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def spawn(args: list[str], env: dict[str, str], log_path: Path, *, append: bool = False) -> subprocess.Popen[bytes]:
    """Start ``args`` from the repository root with exactly ``env``, stdout and stderr to ``log_path``."""
    with log_path.open("ab" if append else "wb") as log:
        return subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def launch_server(
    env: dict[str, str], log_path: Path, *, args: list[str] | None = None, port: int | None = None,
    timeout_s: float = 60.0,
) -> Process:
    """``latentseg serve`` on ``port`` (default: a free one) with exactly ``env``; returns once /healthz answers."""
    import httpx

    port = port or find_free_port()
    cmd = [LATENTSEG, "serve", "--host", "127.0.0.1", "--port", str(port), *(args or [])]
    process = Process(spawn(cmd, env, log_path, append=True), log_path, url=f"http://127.0.0.1:{port}")

    def up() -> bool:
        try:
            return httpx.get(f"{process.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout_s, "latentseg serve answers /healthz", process)
    except AssertionError:
        process.stop()
        raise
    return process


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({process.proc.returncode}):\n{process.log()}")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not true after {timeout_s} s" + (f":\n{process.log()}" if process else ""))


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start ``latentseg serve`` on a free port; ``env`` is its whole LATENTSEG_/REDIS_URL config."""
    started: list[Process] = []

    def start(env: dict[str, str] | None = None, args: list[str] | None = None, timeout_s: float = 60.0) -> Process:
        port = find_free_port()
        full_env = clean_env(XDG_DATA_HOME=str(tmp_path / "xdg"), **(env or {}))
        process = launch_server(full_env, tmp_path / f"serve-{port}.log", args=args, port=port, timeout_s=timeout_s)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_worker(tmp_path: Path, redis_url: str, rq_queue_name: str) -> Iterator[Callable[..., Process]]:
    """Start ``latentseg worker`` on a queue and wait until it is registered in Redis.

    Depends on ``rq_queue_name`` so the workers stop before that namespace is purged.
    """
    started: list[Process] = []

    def start(
        queue: str, storage_dir: Path, bundle: Path | None, env: dict[str, str] | None = None, timeout_s: float = 90.0
    ) -> Process:
        import redis
        from rq import Queue, Worker

        name = f"{queue}-worker-{uuid.uuid4().hex[:8]}"
        log_path = tmp_path / f"{name}.log"
        cmd = [
            LATENTSEG, "worker", "--redis-url", redis_url, "--queue", queue,
            "--storage-dir", str(storage_dir), "--device", "cpu", "--name", name,
        ]
        if bundle is not None:
            cmd += ["--bundle", str(bundle)]
        process = Process(spawn(cmd, clean_env(**(env or {})), log_path), log_path, extra={"name": name})
        started.append(process)
        connection = redis.Redis.from_url(redis_url)
        rq_queue = Queue(queue, connection=connection)
        wait_until(
            lambda: any(w.name == name for w in Worker.all(queue=rq_queue)), timeout_s, "worker registered", process
        )
        return process

    yield start
    for process in started:
        process.stop(timeout_s=30.0)
