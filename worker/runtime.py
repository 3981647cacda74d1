"""The warm worker runtime: the bundle loaded once per process, and where jobs find it.

A worker process builds one :class:`WorkerRuntime` before it takes work (``load_runtime``) and
runs every job inside :func:`runtime_context`, so the dotted-path job function
(:func:`worker.tasks.run_segmentation`) reaches the warm bundle through :func:`current_runtime`
without a module-level global. Embedded mode passes the runtime to the job function directly.

torch and MONAI are imported only inside :func:`load_runtime` / :func:`pick_device`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.bundle import LoadedBundle
    from model.onnx_backend import OnnxBundle

__all__ = ["WorkerRuntime", "current_runtime", "load_runtime", "pick_device", "runtime_context"]

log = logging.getLogger(__name__)

_CURRENT: contextvars.ContextVar[WorkerRuntime] = contextvars.ContextVar("latentseg_worker_runtime")


@dataclass(frozen=True)
class WorkerRuntime:
    """What a job needs besides its payload: the warm bundle and the shared storage root."""

    bundle: LoadedBundle | OnnxBundle
    storage_root: Path
    # RQ mode: how often a running job refreshes its liveness key (TTL = 3 intervals).
    heartbeat_s: float = 10.0

    @property
    def bundle_info(self) -> dict[str, str]:
        return {
            "name": str(self.bundle.name),
            "version": str(self.bundle.version),
            "device": str(self.bundle.device),
            "backend": self.bundle.backend,
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
) -> WorkerRuntime:
    """Load the bundle (``None`` = the demo bundle shipped in the package) onto ``device``.

    ``backend="onnx"`` runs the networks with ONNX Runtime from the bundle's export
    (``latentseg export-onnx``; ``onnx_dir`` defaults to ``<bundle>/onnx``); a missing or
    stale export is a ``BundleError`` naming the command that makes it.
    """
    from model.onnx_backend import load_backend

    target_device = pick_device(device) if backend == "torch" else None
    bundle = load_backend(bundle_path, backend, device=target_device, onnx_dir=onnx_dir)
    storage_root = Path(storage_root)
    storage_root.mkdir(parents=True, exist_ok=True)
    log.info("loaded bundle %s %s on %s (%s backend)", bundle.name, bundle.version, bundle.device, backend)
    return WorkerRuntime(bundle=bundle, storage_root=storage_root, heartbeat_s=heartbeat_s)


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
