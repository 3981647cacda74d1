"""``GET /jobs/{id}/statistics`` and the summary in ``latentseg submit``'s line, against a real
embedded ``latentseg serve`` (worker thread, tiny random bundle)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import LATENTSEG, Process, Volume, clean_env, wait_until


def test_statistics_route_and_submit_summary(start_server: Callable[..., Process], tiny_bundle: Path,
                                             small_nifti: Volume, tmp_path: Path) -> None:
    server = start_server({"LATENTSEG_BUNDLE": str(tiny_bundle), "LATENTSEG_STORAGE_DIR": str(tmp_path / "storage")})
    wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 60, "embedded bundle loaded", server)
    out = tmp_path / "out"
    result = subprocess.run(
        [LATENTSEG, "submit", str(small_nifti.path), "--server", server.url, "--targets", "liver,spleen",
         "--ensemble", "2", "--steps", "2", "--out", str(out), "--poll-interval", "0.3", "--no-progress"],
        env=clean_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr + server.log()
    job_id = result.stdout.splitlines()[0].split("\t")[1]
    downloaded = json.loads((out / "small" / "statistics.json").read_text())
    assert set(downloaded["targets"]) == {"liver", "spleen"} and downloaded["ensemble"] == 2

    served = httpx.get(f"{server.url}/jobs/{job_id}/statistics", timeout=30)
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    assert served.json() == downloaded
    # The submit line ends with each target's volume and the review list, from the same file.
    line = next(line for line in result.stdout.splitlines() if "finished ->" in line)
    for name, entry in downloaded["targets"].items():
        assert f"{name} {entry['volume_ml']:.0f} ml" in line
        assert (f"{name} ({entry['review_reason']})" in line) is entry["needs_review"]
    assert httpx.get(f"{server.url}/jobs/{'1' * 32}/statistics", timeout=30).status_code == 404
