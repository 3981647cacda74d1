"""One home for the sampling defaults (issue 20 item 2): a bundle whose manifest says ``ensemble: 3``
gives 3 members through `latentseg segment`, the embedded API and an RQ worker alike, and the
API refuses a request above the operator's cap with 422 naming the parameter and the range.

The observables: ``statistics.json`` (``ensemble`` and each target's member volumes) and, for the
API, the job record's ``ensemble`` and ``steps`` (what the worker ran with).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LATENTSEG, clean_env, make_small_volume, wait_until
from tests.e2e.flow import poll

pytestmark = pytest.mark.slow

ENSEMBLE, STEPS = 3, 2  # the bundle copy's sampling section; neither is the old API default (5, 10)


@pytest.fixture(scope="module")
def bundle_with_defaults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.bundle.loaded import write_random_bundle

    path = write_random_bundle(tmp_path_factory.mktemp("sampling") / "bundle", seed=0)
    manifest_path = path / "bundle.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["sampling"].update(ensemble=ENSEMBLE, steps=STEPS)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return path


def _members(statistics: dict[str, Any]) -> tuple[int, set[int]]:
    return statistics["ensemble"], {t["ensemble_volume_ml"]["members"] for t in statistics["targets"].values()}


def _api_run(server_url: str, volume: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit without ensemble or steps; the finished record and its statistics.json."""
    with httpx.Client(base_url=server_url, timeout=60.0) as http:
        over = http.post("/segment", params={"targets": "liver", "ensemble": 33}, content=volume.read_bytes())
        assert over.status_code == 422, over.text
        detail = over.json()["detail"]
        assert (detail["parameter"], detail["allowed"]) == ("ensemble", [1, 32]), detail
        assert "ensemble" in detail["message"] and "1..32" in detail["message"]
        steps = http.post("/segment", params={"targets": "liver", "steps": 1001}, content=volume.read_bytes())
        assert steps.status_code == 422 and steps.json()["detail"]["allowed"] == [1, 1000], steps.text

        response = http.post("/segment", params={"targets": "liver"}, content=volume.read_bytes())
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        record = poll(http, [job_id], timeout_s=120)[job_id]
        assert record["status"] == "finished", record
        stats = http.get(f"/jobs/{job_id}/statistics")
        assert stats.status_code == 200, stats.text
        return record, stats.json()


def test_the_bundle_sampling_section_is_the_default_of_cli_embedded_api_and_rq_worker(
    start_server, start_worker, redis_url: str, rq_queue_name: str,  # type: ignore[no-untyped-def]
    bundle_with_defaults: Path, tmp_path: Path,
) -> None:
    volume = make_small_volume(tmp_path / "small.nii.gz").path
    out = tmp_path / "cli"
    # The CLI runs while the servers start (two cores: each process spends its first seconds importing torch).
    cli = subprocess.Popen(
        [LATENTSEG, "segment", str(volume), "--targets", "liver", "--out", str(out), "--bundle",
         str(bundle_with_defaults), "--device", "cpu", "--quiet"],
        env=clean_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        embedded = start_server(env={"LATENTSEG_BUNDLE": str(bundle_with_defaults),
                                     "LATENTSEG_STORAGE_DIR": str(tmp_path / "embedded")})
        start_worker(rq_queue_name, tmp_path / "rq", bundle_with_defaults)
        rq = start_server(env={"REDIS_URL": redis_url, "LATENTSEG_QUEUE": rq_queue_name,
                               "LATENTSEG_STORAGE_DIR": str(tmp_path / "rq")})
        output, _ = cli.communicate(timeout=180)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, output
    assert _members(json.loads((out / "statistics.json").read_text())) == (ENSEMBLE, {ENSEMBLE})

    wait_until(lambda: httpx.get(f"{embedded.url}/readyz").status_code == 200, 60, "embedded bundle loaded", embedded)
    for server in (embedded, rq):
        record, statistics = _api_run(server.url, volume)
        assert (record["ensemble"], record["steps"]) == (ENSEMBLE, STEPS), (server.url, record)
        assert _members(statistics) == (ENSEMBLE, {ENSEMBLE}), server.log()
    shutil.rmtree(out)
