"""A worker picks the bundle's sampling defaults for a job that leaves them out (worker.tasks.with_sampling)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from model.bundle.manifest import SamplingCaps, SamplingRangeError
from worker.contracts import SegmentationRequest, new_job_id
from worker.runtime import WorkerRuntime
from worker.tasks import with_sampling


class Notes:
    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def annotate(self, fields: dict[str, Any]) -> None:
        self.fields.update(fields)


def _runtime(tmp_path: Path, caps: SamplingCaps = SamplingCaps()) -> WorkerRuntime:
    bundle = SimpleNamespace(config=SimpleNamespace(sampling=SimpleNamespace(ensemble=3, steps=2)))
    return WorkerRuntime(bundle=bundle, storage_root=tmp_path, sampling_caps=caps)  # type: ignore[arg-type]


def _request(**fields: Any) -> SegmentationRequest:
    base: dict[str, Any] = {"job_id": new_job_id(), "input_name": "input.nii.gz", "targets": ("liver",),
                            "ensemble": None, "steps": None, "seed": 0}
    return SegmentationRequest(**{**base, **fields})


def test_left_out_values_come_from_the_bundle_and_go_into_the_record(tmp_path: Path) -> None:
    notes, started = Notes(), {}
    chosen = with_sampling(_runtime(tmp_path), _request(), notes, started)  # type: ignore[arg-type]
    assert (chosen.ensemble, chosen.steps) == (3, 2)
    assert notes.fields == started == {"ensemble": 3, "steps": 2}
    # a payload without them round-trips as null
    assert SegmentationRequest.from_payload(_request().to_payload()).ensemble is None


def test_given_values_are_kept(tmp_path: Path) -> None:
    notes: Notes = Notes()
    request = _request(ensemble=5, steps=7)
    assert with_sampling(_runtime(tmp_path), request, notes, {}) is request  # type: ignore[arg-type]
    assert notes.fields == {}


def test_a_bundle_default_over_the_operator_cap_fails_the_job(tmp_path: Path) -> None:
    with pytest.raises(SamplingRangeError, match="LATENTSEG_MAX_ENSEMBLE"):
        with_sampling(_runtime(tmp_path, SamplingCaps(max_ensemble=2)), _request(), Notes(), {})  # type: ignore[arg-type]
