"""worker.memory: the peak-memory estimate from a volume's shape, the default budget from the
cgroup, and the refusal of an over-budget job before it allocates (real NIfTI files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_nifti
from worker.contracts import SegmentationRequest, new_job_id
from worker.memory import MiB, MemoryModel, default_budget_mb


def _model(**overrides: object) -> MemoryModel:
    fields: dict[str, object] = {"model_spacing": (3.0, 3.0, 3.0), "writers": 2, "activation_bytes": 0}
    return MemoryModel(**{**fields, **overrides})  # type: ignore[arg-type]


def test_the_issue_upload_is_estimated_near_what_it_cost() -> None:
    """512x512x2048 int16 at 0.7 mm took the worker to 13.6 GB RSS (issue 17)."""
    estimate = _model().estimate_bytes((512, 512, 2048), (0.7, 0.7, 0.7), targets=1, ensemble=5)
    assert 12_000 * MiB < estimate < 16_000 * MiB


def test_the_estimate_grows_with_voxels_targets_and_ensemble_and_shrinks_with_coarser_spacing() -> None:
    model = _model()
    base = model.estimate_bytes((256, 256, 100), (1.0, 1.0, 1.0), targets=1, ensemble=1)
    assert model.estimate_bytes((256, 256, 200), (1.0, 1.0, 1.0), 1, 1) > base
    assert model.estimate_bytes((256, 256, 100), (1.0, 1.0, 1.0), 4, 1) > base
    assert model.estimate_bytes((256, 256, 100), (1.0, 1.0, 1.0), 1, 16) > base
    # Same voxels covering less anatomy: a smaller model grid.
    assert model.estimate_bytes((256, 256, 100), (0.5, 0.5, 0.5), 1, 1) < base
    assert _model(baseline_bytes=100 * MiB).estimate_bytes((256, 256, 100), (1.0, 1.0, 1.0), 1, 1) == base + 100 * MiB
    with pytest.raises(ValueError, match="3-D"):
        model.estimate_bytes((256, 256), (1.0, 1.0), 1, 1)


def test_published_entries_round_trip_and_malformed_ones_are_refused() -> None:
    model = _model(baseline_bytes=123, context_channels=3)
    assert MemoryModel.from_json(model.to_json(4096)) == (model, 4096)
    with pytest.raises(ValueError, match="malformed"):
        MemoryModel.from_json('{"budget_mb": 1}')


def test_the_default_budget_is_most_of_the_cgroup_limit_or_of_the_machine(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("4294967296\n")
    assert default_budget_mb(v2) == int(4096 * 0.8)
    (v2 / "memory.max").write_text("max\n")  # unlimited: the machine's memory
    machine = default_budget_mb(tmp_path / "missing")
    assert default_budget_mb(v2) == machine > 0
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(2 * 1024**3))
    assert default_budget_mb(tmp_path / "v1") == int(2048 * 0.8)


def test_a_job_over_the_budget_is_refused_from_its_header_before_it_allocates(tmp_path: Path) -> None:
    from worker.runtime import WorkerRuntime
    from worker.tasks import OverMemoryBudget, check_memory, describe_failure

    job_id = new_job_id()
    directory = tmp_path / "jobs" / job_id
    directory.mkdir(parents=True)
    # A header declaring 512x512x1024 int16 over a tiny file: only the header is read.
    big = directory / "input.nii"
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 1024))
    header.set_data_dtype(np.int16)
    header.set_zooms((0.7, 0.7, 0.7))
    big.write_bytes(header.binaryblock + b"\0" * 4)
    small = write_nifti(tmp_path / "small.nii", np.zeros((32, 32, 8), np.int16), np.diag([1.5, 1.5, 3.0, 1.0]))

    runtime = WorkerRuntime(bundle=None, storage_root=tmp_path, memory=_model(), memory_budget_mb=2048)  # type: ignore[arg-type]
    request = SegmentationRequest(job_id=job_id, input_name="input.nii", targets=("liver",), ensemble=5, steps=2, seed=0)
    with pytest.raises(OverMemoryBudget) as refused:
        check_memory(runtime, request, big)
    reason = describe_failure(refused.value, tmp_path)
    assert reason.startswith("too large for this worker's memory") and "2,048 MB" in reason, reason
    assert "LATENTSEG_WORKER_MEMORY_MB" in reason
    assert check_memory(runtime, request, small) is not None  # under the budget: allowed, with its estimate
    unbounded = WorkerRuntime(bundle=None, storage_root=tmp_path)  # type: ignore[arg-type]
    assert check_memory(unbounded, request, big) is None
