"""A bounded soak: mixed valid and hostile load against a real ``latentseg serve`` + ``latentseg
worker`` (RQ mode) and a private ``redis-server``, sampling what would leak.

Load, one client operation at a time in a fixed rotation: valid small jobs (polled to the end,
results zip fetched, then deleted as a client cleaning up would), uploads over the size cap,
bad gzip, unknown targets, slow clients (headers a byte at a time, never finished; the
server's header deadline drops them), and cancellations (a job deleted while queued or
running). Every ``--sample-s`` seconds: API and worker RSS (``/proc/PID/status`` VmRSS), open
file descriptors (``/proc/PID/fd``) and Redis ``used_memory``. The verdict compares the mean
of the first and last quarter of the samples taken after ``--warmup-s`` (imports and first
allocations happen on the first requests; those samples are shown, marked, but not judged): a
metric is "growing" when its last quarter is above the first by more than both a relative and
an absolute tolerance.

    python -m benchmarks.soak [--minutes 20] [--sample-s 15] [--warmup-s 60]

Prints the table and saves it with the raw samples as ``runs/bench/results/soak.{md,json}``.
Uses a private Redis on a free port (``--redis-url`` to use another; its used_memory then
includes whatever else lives there) and a temp storage directory.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.common import LATENTSEG, REPO, Table, load_average, publish

MiB = 1024 * 1024
UPLOAD_CAP_BYTES = 2 * MiB
HEADER_TIMEOUT_S = 2.0
# (relative, absolute) growth that counts as "growing", per metric.
TOLERANCE = {"api_rss_mb": (0.10, 20.0), "worker_rss_mb": (0.10, 30.0), "api_fds": (0.20, 8.0),
             "worker_fds": (0.20, 8.0), "redis_used_mb": (0.20, 1.0)}


@dataclass
class Sample:
    t_s: float
    api_rss_mb: float
    worker_rss_mb: float
    api_fds: int
    worker_fds: int
    redis_used_mb: float
    ops: int


@dataclass
class LoadStats:
    ops: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str, status: int | str, expected: set[int | str] | None = None) -> None:
        with self.lock:
            self.ops[kind] += 1
            self.statuses[f"{kind}:{status}"] += 1
            if expected is not None and status not in expected and len(self.unexpected) < 50:
                self.unexpected.append(f"{kind}: {status}")

    def total(self) -> int:
        with self.lock:
            return sum(self.ops.values())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def small_volume(path: Path, shape: tuple[int, int, int] = (32, 32, 8)) -> bytes:
    import nibabel as nib
    import numpy as np

    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    inside = ((grid[0] + 0.2) / 0.5) ** 2 + (grid[1] / 0.4) ** 2 + (grid[2] / 0.9) ** 2 <= 1
    nib.save(nib.Nifti1Image(np.where(inside, 60, -100).astype(np.int16), np.diag([1.5, 1.5, 3.0, 1.0])), str(path))
    return path.read_bytes()


class Load:
    """The client side: one operation at a time, in rotation, until ``stop`` is set."""

    def __init__(self, url: str, volume: bytes, stats: LoadStats, stop: threading.Event) -> None:
        self._url = url
        self._volume = volume
        self._stats = stats
        self._stop = stop
        self._http = httpx.Client(base_url=url, timeout=30.0)
        self._n = 0
        self._host, self._port = url.removeprefix("http://").split(":")

    def _distinct(self) -> bytes:
        """The volume with a distinct gzip mtime, so the dedup key differs and each job is new work."""
        self._n += 1
        raw = gzip.decompress(self._volume)
        return gzip.compress(raw, compresslevel=1, mtime=self._n)

    def _submit(self, targets: str = "liver") -> httpx.Response:
        return self._http.post("/segment", params={"targets": targets, "ensemble": 1, "steps": 2, "seed": self._n},
                               content=self._distinct())

    def valid_job(self) -> None:
        response = self._submit()
        self._stats.count("valid", response.status_code, {200, 202})
        if response.status_code not in (200, 202):
            return
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + 120
        status = "queued"
        ended = ("finished", "failed", "canceled")
        while status not in ended and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.3)
            status = self._http.get(f"/jobs/{job_id}").json()["status"]
        self._stats.count("valid-ended", status, None)
        if status == "finished":
            archive = self._http.get(f"/jobs/{job_id}/results.zip")
            self._stats.count("results.zip", archive.status_code, {200})
        self._http.delete(f"/jobs/{job_id}")

    def cancel_job(self) -> None:
        response = self._submit()
        if response.status_code not in (200, 202):
            self._stats.count("cancel", response.status_code, {200, 202})
            return
        job_id = response.json()["job_id"]
        time.sleep(0.5 if self._n % 2 else 0.0)  # half while queued, half once it may have started
        deleted = self._http.delete(f"/jobs/{job_id}")
        self._stats.count("cancel", deleted.status_code, {200, 202})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self._stop.is_set():
            status = self._http.get(f"/jobs/{job_id}").json()["status"]
            if status in ("canceled", "finished", "failed"):
                break
            time.sleep(0.3)
        self._http.delete(f"/jobs/{job_id}")

    def oversized(self) -> None:
        body = os.urandom(UPLOAD_CAP_BYTES + 64 * 1024)
        response = self._http.post("/segment", params={"targets": "liver"}, content=body)
        self._stats.count("oversized", response.status_code, {413})

    def bad_gzip(self) -> None:
        body = b"\x1f\x8b\x08\x00" + os.urandom(4096)
        response = self._http.post("/segment", params={"targets": "liver"}, content=body)
        self._stats.count("bad-gzip", response.status_code, {415, 422})

    def unknown_target(self) -> None:
        response = self._submit(targets="not_an_organ_" + str(self._n))
        self._stats.count("unknown-target", response.status_code, {422})

    def slow_client(self) -> None:
        """Headers a byte at a time, never finished: the server must drop it at its header deadline."""
        started = time.monotonic()
        with socket.create_connection((self._host, int(self._port)), timeout=HEADER_TIMEOUT_S * 4) as sock:
            try:
                for byte in b"POST /segment?targets=liver HTTP/1.1\r\nHost: x\r\n":
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
                    if time.monotonic() - started > HEADER_TIMEOUT_S * 3:
                        break
                reply = sock.recv(4096)
                outcome = "dropped" if not reply or b" 408 " in reply else "answered"
            except OSError:
                outcome = "dropped"
        self._stats.count("slow-client", outcome, {"dropped"})

    def run(self) -> None:
        rotation = [self.valid_job, self.oversized, self.bad_gzip, self.valid_job, self.unknown_target,
                    self.cancel_job, self.slow_client]
        i = 0
        while not self._stop.is_set():
            try:
                rotation[i % len(rotation)]()
            except httpx.HTTPError as exc:
                self._stats.count("transport-error", type(exc).__name__, set())
            i += 1


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed; pass --redis-url")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "yes", "--protected-mode", "no"],
        stdout=(directory / "redis.log").open("wb"), stderr=subprocess.STDOUT,
    )
    return proc, f"redis://127.0.0.1:{port}/0"


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{what}: not ready after {timeout_s} s")


def quarter_means(samples: list[Sample], name: str) -> tuple[float, float]:
    quarter = max(1, len(samples) // 4)
    values = [float(getattr(s, name)) for s in samples]
    return statistics.fmean(values[:quarter]), statistics.fmean(values[-quarter:])


def verdict(samples: list[Sample]) -> dict[str, str]:
    out = {}
    for name, (relative, absolute) in TOLERANCE.items():
        first, last = quarter_means(samples, name)
        growing = last - first > absolute and last > first * (1 + relative)
        out[name] = f"{'growing' if growing else 'flat'} ({first:.1f} → {last:.1f})"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--sample-s", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="load before the judged samples")
    parser.add_argument("--redis-url", default=None, help="default: a private redis-server on a free port")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, storage)")
    args = parser.parse_args()
    from model.bundle.loaded import write_random_bundle

    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="latentseg-soak-"))
    processes: list[subprocess.Popen[bytes]] = []
    redis_proc = None
    try:
        if args.redis_url is None:
            (work / "redis").mkdir()
            redis_proc, redis_url = start_redis(work / "redis")
        else:
            redis_url = args.redis_url
        import redis

        connection = redis.Redis.from_url(redis_url)
        wait_for(connection.ping, 20, "redis")
        bundle = write_random_bundle(work / "bundle", seed=0)
        queue = f"soak-{os.getpid()}"
        storage = work / "storage"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSEG_") and k != "REDIS_URL"}
        env.update(REDIS_URL=redis_url, LATENTSEG_QUEUE=queue, LATENTSEG_STORAGE_DIR=str(storage),
                   LATENTSEG_MAX_UPLOAD_BYTES=str(UPLOAD_CAP_BYTES), LATENTSEG_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
                   LATENTSEG_HEARTBEAT_S="2", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        port = free_port()
        api = subprocess.Popen([LATENTSEG, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=REPO,
                               stdout=(work / "serve.log").open("wb"), stderr=subprocess.STDOUT)
        processes.append(api)
        worker = subprocess.Popen(
            [LATENTSEG, "worker", "--redis-url", redis_url, "--queue", queue, "--storage-dir", str(storage),
             "--device", "cpu", "--bundle", str(bundle)],
            env=env, cwd=REPO, stdout=(work / "worker.log").open("wb"), stderr=subprocess.STDOUT,
        )
        processes.append(worker)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 180, "API ready with a worker")
        volume = small_volume(work / "small.nii.gz")
        stats = LoadStats()
        stop = threading.Event()
        client = threading.Thread(target=Load(url, volume, stats, stop).run, daemon=True)
        samples: list[Sample] = []
        started = time.monotonic()
        end = started + args.minutes * 60
        client.start()
        while True:
            now = time.monotonic()
            samples.append(Sample(
                t_s=round(now - started, 1), api_rss_mb=round(rss_mb(api.pid), 1),
                worker_rss_mb=round(rss_mb(worker.pid), 1), api_fds=open_fds(api.pid), worker_fds=open_fds(worker.pid),
                redis_used_mb=round(int(connection.info("memory")["used_memory"]) / MiB, 2), ops=stats.total(),
            ))
            for proc, name in ((api, "API"), (worker, "worker")):
                if proc.poll() is not None:
                    raise SystemExit(f"the {name} exited ({proc.returncode}) during the soak; see {work}")
            if now >= end:
                break
            time.sleep(min(args.sample_s, max(0.0, end - now)))
        stop.set()
        client.join(150)
        minutes = (time.monotonic() - started) / 60
        judged = [s for s in samples if s.t_s >= args.warmup_s] or samples
        result = verdict(judged)
        table = Table(
            title=f"Soak: {minutes:.1f} min of mixed valid/hostile load, one API + one worker (RQ), sampled every "
                  f"{args.sample_s:g} s",
            columns=["t (s)", "API RSS (MB)", "worker RSS (MB)", "API fds", "worker fds", "Redis used (MB)",
                     "client ops"],
            rows=[[f"{s.t_s}" + ("" if s.t_s >= args.warmup_s else " (warm-up)"), s.api_rss_mb, s.worker_rss_mb,
                   s.api_fds, s.worker_fds, s.redis_used_mb, s.ops] for s in samples],
            notes=[f"{name}: {text}" for name, text in result.items()]
            + [f"operations: {dict(sorted(stats.ops.items()))}",
               f"outcomes: {dict(sorted(stats.statuses.items()))}",
               f"unexpected answers: {stats.unexpected or 'none'}"],
        )
        overall = "flat" if all(v.startswith("flat") for v in result.values()) else "growing"
        table.notes.insert(0, f"verdict: {overall} (first vs last quarter of the {len(judged)} samples after "
                              f"{args.warmup_s:g} s of warm-up)")
        publish("soak", [table], {"samples": [s.__dict__ for s in samples], "verdict": result,
                                  "ops": dict(stats.ops), "statuses": dict(stats.statuses),
                                  "unexpected": stats.unexpected, "minutes": minutes}, load_before)
    finally:
        for proc in reversed(processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait(10)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
