"""Shared helpers for the benchmark scripts: machine facts, bundles, phantoms, timers, tables.

Every benchmark prints one Markdown table on stdout and saves it, with its raw numbers, as
``runs/bench/results/<name>.{md,json}``; ``benchmarks/report.py`` assembles BENCHMARKS.md.
Run them from the repository root (``bash benchmarks/run_all.sh``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.hardware import cpu_model

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "runs" / "bench"
RESULTS_DIR = BENCH_DIR / "results"
DATA_DIR = BENCH_DIR / "data"
LATENTSEG = str(Path(sys.executable).with_name("latentseg"))
DEMO_CONFIG = REPO / "training" / "configs" / "demo.yaml"

STANDARD_SHAPE = (512, 512, 100)
STANDARD_SPACING = (0.8, 0.8, 2.5)
STANDARD_SEED = 9000  # held out: the demo bundle trains on phantoms of seed 1000
STANDARD_TARGETS = "liver,spleen"  # two targets the shipped bundle serves (v0.6 benchmarks used liver,pancreas; same cost per target)


# ----------------------------------------------------------------------------- machine
def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def machine_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "ort_providers": onnxruntime.get_available_providers(),
    }


# ----------------------------------------------------------------------------- bundles and data
def benchmark_bundle() -> tuple[Path, bool]:
    """The trained demo bundle when present; else a random bundle with the demo configuration
    (same networks and shapes, so timings hold; accuracy does not). Returns (path, trained)."""
    from model.bundle.manifest import demo_bundle_path, read_manifest

    demo = demo_bundle_path()
    try:
        trained = read_manifest(demo).provenance.get("trained", True) is not False
        return demo, trained
    except Exception:
        pass
    path = BENCH_DIR / "random-demo-config"
    if not (path / "bundle.json").is_file():
        import yaml

        from model.bundle.loaded import write_random_bundle
        from model.bundle.config import ModelConfig

        config = ModelConfig.from_dict(yaml.safe_load(DEMO_CONFIG.read_text())["model"])
        write_random_bundle(path, seed=0, config=config)
    return path, False


def ensure_onnx_export(bundle: Path) -> Path:
    """``bundle/onnx`` if it is current, else a fresh export under runs/bench (never inside the package)."""
    from model.errors import BundleError
    from model.bundle.onnx_backend import default_onnx_dir, export_onnx, load_onnx_bundle

    for candidate in (default_onnx_dir(bundle), BENCH_DIR / "onnx" / bundle.name):
        try:
            load_onnx_bundle(bundle, candidate)
            return candidate
        except BundleError:
            continue
    return export_onnx(bundle, BENCH_DIR / "onnx" / bundle.name)


def phantom_path(seed: int, shape: Sequence[int] | None, spacing: Sequence[float] | None) -> tuple[Path, Path]:
    """A cached phantom (image, label) as NIfTI under runs/bench/data."""
    import nibabel as nib

    from training.synthetic.phantoms import PhantomSpec, generate_phantom

    tag = f"{seed}_{'x'.join(map(str, shape)) if shape else 'auto'}_{'x'.join(map(str, spacing)) if spacing else 'auto'}"
    image_path, label_path = DATA_DIR / f"phantom_{tag}.nii.gz", DATA_DIR / f"phantom_{tag}_label.nii.gz"
    if not (image_path.is_file() and label_path.is_file()):
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        spec = PhantomSpec(
            shape=tuple(shape) if shape else None,  # type: ignore[arg-type]
            spacing=tuple(spacing) if spacing else None,  # type: ignore[arg-type]
        )
        phantom = generate_phantom(seed, spec)
        nib.save(nib.Nifti1Image(phantom.label, phantom.affine), str(label_path))
        nib.save(nib.Nifti1Image(phantom.image, phantom.affine), str(image_path))
    return image_path, label_path


def standard_phantom() -> Path:
    return phantom_path(STANDARD_SEED, STANDARD_SHAPE, STANDARD_SPACING)[0]


# ----------------------------------------------------------------------------- timing
@contextmanager
def stopwatch(into: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - start


class TimedBundle:
    """Delegates to a bundle and adds the seconds spent in its three networks to ``seconds``."""

    NETWORKS = ("encode_image", "denoiser", "decode_mask")

    def __init__(self, bundle: Any) -> None:
        self._bundle = bundle
        self.seconds: dict[str, float] = dict.fromkeys(self.NETWORKS, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(self.NETWORKS, 0)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._bundle, name)
        if name not in self.NETWORKS:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed


@contextmanager
def patched(module: Any, name: str, seconds: dict[str, float], key: str) -> Iterator[None]:
    """Time every call of ``module.name`` (a benchmark-only wrapper; restored afterwards)."""
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stopwatch(seconds, key):
            return original(*args, **kwargs)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


@dataclass
class Run:
    seconds: float
    max_rss_mib: float
    returncode: int
    stderr: str = ""


def run_measured(args: Sequence[str], env: dict[str, str] | None = None, timeout_s: float = 1800) -> Run:
    """Run a command; wall time and the child's own peak RSS (wait4 rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=REPO)
    deadline = start + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            raise TimeoutError(f"{args[0]} ran past {timeout_s} s")
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(elapsed, usage.ru_maxrss / 1024.0, proc.returncode, stderr[-2000:])


def repeat(fn: Callable[[], float], times: int) -> list[float]:
    return [fn() for _ in range(times)]


def summary(values: Sequence[float]) -> str:
    """``median (min–max)`` in seconds, or one value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


# ----------------------------------------------------------------------------- output
@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def publish(name: str, tables: Sequence[Table], data: dict[str, Any], load_before: float) -> None:
    """Print the tables and save them with the raw numbers, machine and load."""
    data = {**data, "machine": machine_info(), "load_before": load_before, "load_after": load_average(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    text = "\n".join(t.markdown() for t in tables)
    text += f"\n_load average (1 min) {load_before} before, {data['load_after']} after_\n"
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.md").write_text(text)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
