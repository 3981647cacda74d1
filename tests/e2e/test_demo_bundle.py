"""The liver overlap check of issue 4, with the trained demo bundle, through the real RQ stack.

Skipped (with the reason) until the demo bundle ships: it runs when
``model.bundle.manifest.demo_bundle_path()`` holds a readable bundle whose manifest says
``provenance.trained == true``. A randomly initialised bundle cannot segment anything, so there
is no meaningful threshold to check with it; tests/e2e/test_rq_flow.py covers the same flow with
the tiny random bundle (shapes, affines, ranges, lifecycle).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Volume, phantom_label_value, trained_demo_bundle
from tests.e2e.flow import check_mean_and_variance, dice, download_results, poll, submit

pytestmark = pytest.mark.slow


def test_liver_mean_overlaps_the_phantom_liver(
    start_server, start_worker, redis_url: str, rq_queue_name: str,  # type: ignore[no-untyped-def]
    phantom_volume: Volume, tmp_path: Path,
) -> None:
    if trained_demo_bundle() is None:
        pytest.skip("no trained demo bundle in model/bundles/demo yet (missing, or provenance.trained is not true)")
    storage = tmp_path / "storage"
    start_worker(rq_queue_name, storage, None)  # no --bundle: the worker loads the shipped demo bundle
    server = start_server(
        env={"REDIS_URL": redis_url, "LATENTSEG_QUEUE": rq_queue_name, "LATENTSEG_STORAGE_DIR": str(storage)}
    )
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        job_id = submit(http, phantom_volume.path, "liver,spleen", ensemble=5, steps=10)
        state = poll(http, [job_id], timeout_s=500)[job_id]
        assert state["status"] == "finished", state
        paths = download_results(http, job_id, tmp_path / "download")
    means = check_mean_and_variance(paths, ["liver", "spleen"], phantom_volume)
    liver = phantom_volume.label == phantom_label_value("liver")
    score = dice(means["liver"] > 0.5, liver)
    assert score > 0.5, f"liver Dice {score:.3f} with the demo bundle"
