"""A job's peak memory, estimated from its volume's shape before anything is allocated, and the
worker's memory budget. Torch-free and Redis-free (stdlib only): the API imports it too.

Where a NIfTI job's memory goes (model/inference/pipeline.py ``segment_file``), per source voxel N_src and
per model-grid voxel N_model (the volume resampled to the bundle's spacing):

- source grid, float32: the input's HU (kept for the statistics), the copy reoriented for
  resampling, the label accumulator (float32 best + uint8 id), and while writing one map being
  resampled plus up to ``writers`` maps queued for gzip: ``(4 + 4 + 5 + 4 * (writers + 1))``
  bytes per voxel. 512x512x2048 with two writers: 13.4 GB, the 13.6 GB RSS issue 17 measured.
- model grid, float32: HU, its intensity-scaled copy with ``context_channels`` context slices,
  and a mean and a variance per target: ``4 * (2 + context_channels + 2 * targets)``.
- one axial slice's blended ensemble (targets x ensemble members, with the sliding window's
  output and weight maps): ``12 * targets * ensemble`` per model-grid slice voxel.
- the denoiser's activations (bounded by the pipeline's per-batch budget) and the process as it
  stood before the job (interpreter, torch, the bundle): constants.

The worker refuses a job whose estimate exceeds ``LATENTSEG_WORKER_MEMORY_MB`` and publishes its
:class:`MemoryModel` and budget at :func:`memory_key`; the API answers 413 when an upload's
estimate exceeds every live worker's budget.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["MiB", "MemoryModel", "budget_message", "default_budget_mb", "memory_key", "process_rss_bytes"]

MiB = 1024 * 1024
# Of the cgroup limit (or the machine's memory) a worker plans to use by default.
DEFAULT_BUDGET_FRACTION = 0.8
_UNLIMITED_CGROUP = 1 << 60


def memory_key(queue_name: str) -> str:
    """Redis hash where each worker publishes ``{"budget_mb", "model": MemoryModel fields}`` (JSON)."""
    return f"latentseg:{queue_name}:memory"


@dataclass(frozen=True)
class MemoryModel:
    """What a worker's bundle and process contribute to a job's peak memory (see module docstring)."""

    model_spacing: tuple[float, float, float]
    context_channels: int = 5
    writers: int = 2
    activation_bytes: int = 1 << 30
    baseline_bytes: int = 0
    # The bundle's default ensemble (its sampling section), for a job that leaves it out.
    default_ensemble: int = 1

    def estimate_bytes(
        self, shape: Sequence[int], spacing: Sequence[float], targets: int, ensemble: int | None
    ) -> int:
        """Peak bytes of a job on a volume of ``shape`` (voxels) at ``spacing`` (mm); ``ensemble``
        None: the bundle's default."""
        ensemble = self.default_ensemble if ensemble is None else ensemble
        if len(shape) != 3 or len(spacing) != 3:
            raise ValueError(f"expected a 3-D shape and spacing, got {tuple(shape)} and {tuple(spacing)}")
        n_source = math.prod(int(s) for s in shape)
        extent = [abs(float(n) * float(d)) for n, d in zip(shape, spacing, strict=True)]  # mm along each axis
        model_dims = [max(1, math.ceil(e / float(m))) for e, m in zip(extent, self.model_spacing, strict=True)]
        n_model = math.prod(model_dims)
        slice_voxels = n_model // min(model_dims)  # the largest plane: orientation is not known here
        source = n_source * (4 + 4 + 5 + 4 * (self.writers + 1))
        model = n_model * 4 * (2 + self.context_channels + 2 * targets)
        members = slice_voxels * 12 * targets * ensemble
        return int(self.baseline_bytes + self.activation_bytes + source + model + members)

    def to_json(self, budget_mb: int) -> str:
        return json.dumps({"budget_mb": budget_mb, "model": asdict(self)})

    @classmethod
    def from_json(cls, text: str | bytes) -> tuple[MemoryModel, int]:
        """The published entry: (model, budget in MiB). Malformed entries raise ValueError."""
        try:
            value = json.loads(text)
            fields: Mapping[str, object] = value["model"]
            model = cls(
                model_spacing=tuple(float(s) for s in fields["model_spacing"]),  # type: ignore[arg-type, attr-defined]
                context_channels=int(fields["context_channels"]),  # type: ignore[call-overload]
                writers=int(fields["writers"]),  # type: ignore[call-overload]
                activation_bytes=int(fields["activation_bytes"]),  # type: ignore[call-overload]
                baseline_bytes=int(fields["baseline_bytes"]),  # type: ignore[call-overload]
                default_ensemble=int(fields.get("default_ensemble", 1)),  # type: ignore[call-overload]
            )
            return model, int(value["budget_mb"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed memory entry: {exc!r}") from exc


def budget_message(estimate_bytes: int, budget_mb: int, who: str = "this worker's") -> str:
    return (
        f"too large for {who} memory: the job's estimated peak is {estimate_bytes / MiB:,.0f} MB, "
        f"over the budget of {budget_mb:,} MB (LATENTSEG_WORKER_MEMORY_MB); send a smaller or "
        "coarser volume, or run workers with more memory"
    )


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_limit_bytes(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        value = _read_int(path)  # v2 says "max" when unlimited: not a number
        if value is not None and value < _UNLIMITED_CGROUP:
            return value
    return None


def default_budget_mb(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """``DEFAULT_BUDGET_FRACTION`` of the cgroup's memory limit, else of the machine's memory."""
    limit = _cgroup_limit_bytes(cgroup_root)
    if limit is None:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, int(limit * DEFAULT_BUDGET_FRACTION) // MiB)


def process_rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now (``VmRSS`` of /proc/<pid>/status); 0 where /proc is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
