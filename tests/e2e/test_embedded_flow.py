"""End to end in embedded mode: `latentseg serve` with no Redis (an in-process worker thread),
driven by the real `latentseg submit` client."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import LATENTSEG, Volume, clean_env, wait_until, write_truncated_gzip_nifti
from tests.e2e.flow import check_mean_and_variance, download_results, poll, submit

pytestmark = pytest.mark.slow


def _embedded_server(start_server, bundle: Path, storage: Path):  # type: ignore[no-untyped-def]
    server = start_server(env={"LATENTSEG_BUNDLE": str(bundle), "LATENTSEG_STORAGE_DIR": str(storage)})
    wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 60, "embedded bundle loaded", server)
    return server


def _submit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LATENTSEG, "submit", *args], env=clean_env(), capture_output=True, text=True, timeout=300)


def test_submit_cli_against_embedded_server(
    start_server, tiny_bundle: Path, phantom_volume: Volume, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server = _embedded_server(start_server, tiny_bundle, tmp_path / "storage")
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["mode"] == "embedded" and ready["bundle"]["name"] == "random-tiny"

    out = tmp_path / "out"
    result = _submit_cli(
        str(phantom_volume.path), "--server", server.url, "--targets", "liver,pancreas",
        "--ensemble", "2", "--steps", "3", "--out", str(out), "--poll-interval", "0.3",
    )
    assert result.returncode == 0, result.stderr + server.log()
    case_dir = out / "phantom_case"
    paths = {p.name: p for p in case_dir.iterdir()}
    check_mean_and_variance(paths, ["liver", "pancreas"], phantom_volume)
    assert "finished" in result.stdout


def test_embedded_api_flow_and_errors(
    start_server, tiny_bundle: Path, phantom_volume: Volume, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server = _embedded_server(start_server, tiny_bundle, tmp_path / "storage")
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        broken = write_truncated_gzip_nifti(phantom_volume, tmp_path / "broken.nii.gz")
        refused = http.post("/segment?targets=liver", content=broken.read_bytes())
        assert refused.status_code == 422 and "truncated" in refused.json()["detail"]
        good = submit(http, phantom_volume.path, "ivc", ensemble=2, steps=2)
        states = poll(http, [good])
        assert states[good]["status"] == "finished"
        paths = download_results(http, good, tmp_path / "download")
        check_mean_and_variance(paths, ["inferior_vena_cava"], phantom_volume)
        assert http.get(f"/jobs/{'1' * 32}").status_code == 404
        assert http.post("/segment?targets=spleen", content=b"plain text").status_code == 415

    # The client reports user errors in one line with exit 2, failed jobs with exit 1.
    refused = _submit_cli(str(phantom_volume.path), "--server", server.url, "--targets", "unicorn", "--wait")
    assert refused.returncode == 2 and "unicorn" in refused.stderr and "liver" in refused.stderr
    failed = _submit_cli(str(broken), "--server", server.url, "--targets", "liver", "--steps", "2",
                         "--ensemble", "2", "--out", str(tmp_path / "o2"), "--no-progress")
    assert failed.returncode == 2 and "truncated" in failed.stderr
