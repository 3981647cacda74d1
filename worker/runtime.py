"""The warm worker runtime: the bundle loaded once per process, and where jobs find it.

A worker process builds one :class:`WorkerRuntime` before it takes work (``load_runtime``) and
runs every job inside :func:`runtime_context`, so the dotted-path job function
(:func:`worker.tasks.run_segmentation`) reaches the warm bundle through :func:`current_runtime`
without a module-level global. Embedded mode passes the runtime to the job function directly.

A worker process also owns one :class:`StopControl`: how SIGTERM/SIGINT stop it, idle or busy.

torch and MONAI are imported only inside :func:`load_runtime` / :func:`pick_device`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from model.bundle.manifest import SamplingCaps, SamplingRangeError, check_sampling
from worker.contracts import JobInterrupted
from worker.memory import MemoryModel, default_budget_mb, process_rss_bytes

if TYPE_CHECKING:
    from model.bundle.loaded import LoadedBundle
    from model.bundle.onnx_backend import OnnxBundle

__all__ = [
    "StopControl",
    "WorkerRuntime",
    "WorkerStopped",
    "WorkerStopping",
    "current_runtime",
    "load_runtime",
    "pick_device",
    "runtime_context",
]

log = logging.getLogger(__name__)

_CURRENT: contextvars.ContextVar[WorkerRuntime] = contextvars.ContextVar("latentseg_worker_runtime")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class WorkerStopping(Exception):
    """Raised by the signal handler inside :meth:`StopControl.idle_wait`: stop waiting, exit now."""


class WorkerStopped(JobInterrupted):
    """Raised inside :meth:`StopControl.job_region` by a second stop signal (or the grace timer)."""

    state = "failed"
    reason = "stopped: the worker was shut down while this job ran; submit it again"


class StopControl:
    """How SIGTERM/SIGINT stop a worker process. Main thread only (signal handlers run there, and
    a non-forking worker runs its jobs there).

    - First signal, idle (inside :meth:`idle_wait`: the blocking wait for a job, or start-up):
      :class:`WorkerStopping` is raised there, so the worker exits at once.
    - First signal, busy: ``requested`` is set; the running job finishes and no new job is taken.
      With ``grace_s``, a timer sends the process a second SIGTERM after that many seconds.
    - Second signal while the job runs (inside :meth:`job_region`): :class:`WorkerStopped` is
      raised in the job, which records ``failed`` with its reason; then the worker exits. A long
      native call (one torch op) finishes first.
    """

    def __init__(self, grace_s: float | None = None) -> None:
        self.requested = False
        self.forced = False
        self.wake = threading.Event()
        self._grace_s = grace_s
        self._idle = False
        self._in_job = False
        self._fired = False
        self._timer: threading.Timer | None = None

    def install(self) -> bool:
        """Take over SIGTERM/SIGINT; False (nothing installed) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        return True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.requested:
            self.requested = True
            self.wake.set()
            if self._idle:
                log.info("worker: %s while idle; stopping now", name)
                raise WorkerStopping(name)
            log.info("worker: %s; stopping once the running job ends (send it again to stop the job)", name)
            if self._grace_s is not None:
                self._timer = threading.Timer(self._grace_s, os.kill, (os.getpid(), signal.SIGTERM))
                self._timer.daemon = True
                self._timer.start()
            return
        self.forced = True
        if self._idle:
            raise WorkerStopping(name)
        if self._in_job and not self._fired:
            self._fired = True
            log.warning("worker: second %s; stopping the running job", name)
            raise WorkerStopped()
        log.info("worker: %s again; already stopping", name)

    @contextmanager
    def idle_wait(self) -> Iterator[None]:
        """A region the first signal may interrupt with :class:`WorkerStopping`."""
        if self.requested:
            raise WorkerStopping("stop requested")
        self._idle = True
        try:
            yield
        finally:
            self._idle = False

    @contextmanager
    def job_region(self) -> Iterator[None]:
        """The computing part of a job: a second signal raises :class:`WorkerStopped` in it."""
        if self.forced and not self._fired:
            self._fired = True
            raise WorkerStopped()
        self._in_job = True
        try:
            yield
        finally:
            self._in_job = False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


@dataclass(frozen=True)
class WorkerRuntime:
    """What a job needs besides its payload: the warm bundle and the shared storage root."""

    bundle: LoadedBundle | OnnxBundle
    storage_root: Path
    # RQ mode: how often a running job refreshes its liveness key (TTL = 3 intervals).
    heartbeat_s: float = 10.0
    # RQ mode: the process's SIGTERM/SIGINT handling; None in embedded mode.
    stop: StopControl | None = None
    # A job whose estimated peak memory is over budget_mb fails before it allocates; None: unchecked.
    memory: MemoryModel | None = None
    memory_budget_mb: int | None = None
    # The operator's caps on ensemble and steps (None each: the model's range only).
    sampling_caps: SamplingCaps = SamplingCaps()

    @property
    def bundle_info(self) -> dict[str, str]:
        """What the worker publishes (all strings): ``served_targets`` comma-separated and
        ``unserved_reasons`` a JSON object {target: why}, read by the API (service.served)."""
        manifest = self.bundle.manifest
        unserved = {t: manifest.unserved_reason(t) for t in manifest.trained_targets if t not in manifest.served_targets}
        return {
            "name": str(self.bundle.name),
            "version": str(self.bundle.version),
            "device": str(self.bundle.device),
            "backend": self.bundle.backend,
            "served_targets": ",".join(manifest.served_targets),
            "unserved_reasons": json.dumps(unserved, sort_keys=True),
        }


def pick_device(requested: str | None) -> Any:
    """``requested`` if given, else CUDA when present, else CPU."""
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_runtime(
    bundle_path: Path | str | None,
    storage_root: Path,
    device: str | None = None,
    heartbeat_s: float = 10.0,
    *,
    backend: str = "torch",
    onnx_dir: Path | str | None = None,
    memory_budget_mb: int | None = None,
    sampling_caps: SamplingCaps = SamplingCaps(),
) -> WorkerRuntime:
    """Load the bundle (``None`` = the demo bundle shipped in the package) onto ``device``.

    Jobs on the runtime are refused above ``memory_budget_mb`` of estimated peak memory
    (``LATENTSEG_WORKER_MEMORY_MB``; None = :func:`worker.memory.default_budget_mb`), and jobs
    whose ensemble or steps is above ``sampling_caps`` (:func:`worker.tasks.with_sampling`).

    ``backend="onnx"`` runs the networks with ONNX Runtime from the bundle's export
    (``latentseg export-onnx``; ``onnx_dir`` defaults to ``<bundle>/onnx``); a missing or
    stale export is a ``BundleError`` naming the command that makes it.
    """
    from model.bundle.onnx_backend import load_backend

    target_device = pick_device(device) if backend == "torch" else None
    bundle = load_backend(bundle_path, backend, device=target_device, onnx_dir=onnx_dir)
    storage_root = Path(storage_root)
    storage_root.mkdir(parents=True, exist_ok=True)
    log.info("loaded bundle %s %s on %s (%s backend)", bundle.name, bundle.version, bundle.device, backend)
    defaults = bundle.config.sampling
    try:
        check_sampling(defaults.ensemble, defaults.steps, sampling_caps)
    except SamplingRangeError as exc:  # jobs that choose their own values within the caps still run
        log.warning("the bundle's default is over this worker's cap: jobs that leave it to the bundle fail (%s)", exc)
    budget_mb = memory_budget_mb or default_budget_mb()
    log.info("memory budget %d MB per job (LATENTSEG_WORKER_MEMORY_MB)", budget_mb)
    return WorkerRuntime(
        bundle=bundle, storage_root=storage_root, heartbeat_s=heartbeat_s, memory=memory_model(bundle),
        memory_budget_mb=budget_mb, sampling_caps=sampling_caps,
    )


def memory_model(bundle: LoadedBundle | OnnxBundle) -> MemoryModel:
    """The :class:`~worker.memory.MemoryModel` of this process with ``bundle`` loaded: the bundle's
    grid, the gzip writer threads, the CPU activation budget (host memory only on CPU) and the
    process's resident memory now."""
    import torch

    from model.inference.pipeline import CPU_ACTIVATION_BUDGET_BYTES

    cfg = bundle.config
    on_cpu = str(bundle.device).startswith("cpu")
    spacing = tuple(float(s) for s in cfg.preprocess.spacing)
    return MemoryModel(
        model_spacing=(spacing[0], spacing[1], spacing[2]),
        context_channels=int(cfg.image_window_channels),
        writers=max(1, torch.get_num_threads()),
        activation_bytes=CPU_ACTIVATION_BUDGET_BYTES if on_cpu else 0,
        baseline_bytes=process_rss_bytes(),
        default_ensemble=int(cfg.sampling.ensemble),
    )


@contextmanager
def runtime_context(runtime: WorkerRuntime) -> Iterator[WorkerRuntime]:
    token = _CURRENT.set(runtime)
    try:
        yield runtime
    finally:
        _CURRENT.reset(token)


def current_runtime() -> WorkerRuntime:
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError(
            "no worker runtime: run jobs through `latentseg worker` (or pass runtime= explicitly)"
        ) from None
