"""The job viewer of the web page in headless Chromium (Debian's, driven by Playwright with
`executable_path`; WebGL2 through SwiftShader), against a real `latentseg serve` in embedded mode.

A cheap real job: eight axial slices through the liver and spleen of the shipped example CT
(examples/ts_a_torso), the shipped bundle, ensemble 2, 2 steps. The page opens it from its link
(`/?job=ID`); the test toggles a target's mask and checks the canvas changed where the mask is and
changes back, shows a variance map, changes the window and the view, and reads the statistics table
against the job's own statistics.json; the target list offers only what the bundle serves. The
server wants an API key: the link alone gets a refusal in words, the key typed in opens the job
(every volume the viewer fetches carries it). Every request the page makes goes to the server
itself. Result files and the input answer HTTP range requests (206) with their content types.

Skips with the reason when Chromium, the playwright package or the trained bundle is missing.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from model.bundle.manifest import read_manifest
from service.auth import hash_api_key
from tests.conftest import REPO_ROOT, Process, trained_demo_bundle
from tests.e2e.flow import poll, submit

EXAMPLE = REPO_ROOT / "examples" / "ts_a_torso" / "imagesTr" / "ts_a_torso_0000.nii.gz"
SLICES = slice(100, 108)  # the liver and the spleen are both large here
TARGETS = ["liver", "spleen"]
API_KEY = "viewer-test-key-0123456789"
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")


def _crop(path: Path) -> Path:
    import nibabel as nib

    nib.save(nib.load(str(EXAMPLE)).slicer[:, :, SLICES], str(path))
    return path


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _changed(a: bytes, b: bytes) -> float:
    """The share of canvas pixels whose colour differs by more than a rounding step."""
    first, second = _pixels(a), _pixels(b)
    assert first.shape == second.shape
    return float(np.mean(np.abs(first - second).max(axis=-1) > 8))


def _check_ranges(http: httpx.Client, job_id: str) -> None:
    whole = http.get(f"/jobs/{job_id}/results/liver_mean.nii.gz")
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/gzip"
    assert whole.headers["accept-ranges"] == "bytes" and whole.content[:2] == b"\x1f\x8b"
    part = http.get(f"/jobs/{job_id}/results/liver_mean.nii.gz", headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206 and part.content == whole.content[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{len(whole.content)}"
    ct = http.get(f"/jobs/{job_id}/input", headers={"Range": "bytes=0-347"})
    assert ct.status_code == 206 and len(ct.content) == 348
    assert int.from_bytes(ct.content[:4], "little") == 348  # an uncompressed NIfTI-1 header
    assert http.get("/jobs/0123456789abcdef0123456789abcdef/input").status_code == 404


def _statistics(http: httpx.Client, job_id: str) -> dict[str, Any] | None:
    """The job's statistics (``GET /jobs/{id}/statistics``, else its statistics.json), or None."""
    for path in (f"/jobs/{job_id}/statistics", f"/jobs/{job_id}/results/statistics.json"):
        response = http.get(path)
        if response.status_code == 200:
            return dict(response.json())
        assert response.status_code == 404, response.text
    return None


def _settle(page: Any) -> None:
    """Wait two animation frames, so that NiiVue has drawn what the last input asked for."""
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")


def _shot(page: Any) -> bytes:
    _settle(page)
    return bytes(page.locator("#viewer-canvas").screenshot())


def test_viewer_shows_a_finished_job(start_server: Callable[..., Process], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    executable = _chromium()
    bundle = trained_demo_bundle()
    if bundle is None:
        pytest.skip("the shipped bundle is not a trained one")
    keys = tmp_path / "keys"
    keys.write_text(f"viewer {hash_api_key(API_KEY)}\n")
    server = start_server(
        env={"LATENTSEG_API_KEYS_FILE": str(keys)}, args=["--bundle", str(bundle), "--device", "cpu"], timeout_s=90
    )
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, timeout=60, headers=auth) as http:
        job_id = submit(http, _crop(tmp_path / "case.nii.gz"), ",".join(TARGETS), ensemble=2, steps=2)
        assert poll(http, [job_id], timeout_s=180)[job_id]["status"] == "finished", server.log()
        _check_ranges(http, job_id)
        statistics = _statistics(http, job_id)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            requests: list[str] = []
            errors: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{server.url}/?job={job_id}")
            page.wait_for_function("() => document.getElementById('error').textContent.length > 0")
            assert "API key is required" in page.inner_text("#error")  # the link alone: no key typed yet
            page.fill("#key", API_KEY)
            page.click("#lookup button")
            page.wait_for_selector("#viewer[data-ready=true]", timeout=60_000)
            assert page.inner_text("#error") == "", page.inner_text("#error")
            # A mask toggles off and on: the canvas changes, then comes back.
            shown = _shot(page)
            page.uncheck("input[name=show-mask][value=liver]")
            hidden = _shot(page)
            page.check("input[name=show-mask][value=liver]")
            again = _shot(page)
            assert _changed(shown, hidden) > 0.05, "hiding the liver mask left the canvas as it was"
            assert _changed(shown, again) < 0.002, "showing the liver mask again did not restore the canvas"
            # The change is the liver's colour (green, the first target's) going away.
            before, after = _pixels(shown), _pixels(hidden)
            diff = np.abs(before - after).max(axis=-1) > 8
            assert (before[diff][:, 1] - before[diff][:, 0]).mean() > 40  # green dominates where it changed

            # The variance heat map, the window presets, the views and the slider redraw the canvas.
            page.check("input[name=show-variance][value=liver]")
            with_variance = _shot(page)
            assert _changed(again, with_variance) > 0.001
            page.select_option("#window", "bone")
            bone = _shot(page)
            assert _changed(with_variance, bone) > 0.05
            page.click("#views button[data-view=coronal]")
            assert _changed(bone, _shot(page)) > 0.05
            assert page.inner_text("#slice-label").endswith("/ 101")  # coronal: y has 101 slices
            page.click("#views button[data-view=axial]")
            assert page.inner_text("#slice-label").endswith(f"/ {SLICES.stop - SLICES.start}")
            middle = _shot(page)
            page.eval_on_selector("#slice", "(s) => { s.value = '0'; s.dispatchEvent(new Event('input')); }")
            assert page.inner_text("#slice-label").startswith("1 /")
            assert _changed(middle, _shot(page)) > 0.01

            # The target list offers what this bundle serves; the rest only on request, greyed, with the reason.
            assert page.is_visible("input[name=target][value=liver]")
            manifest = read_manifest(bundle)
            unserved = next(t for t in manifest.trained_targets if t not in manifest.served_targets)
            assert not page.is_visible(f"input[name=target][value={unserved}]")
            page.check("#show-unserved")
            assert page.is_visible(f"input[name=target][value={unserved}]")
            assert page.is_disabled(f"input[name=target][value={unserved}]")
            reason = page.locator(f"#target-list label:has(input[value={unserved}])").inner_text()
            assert "not served" in reason and "Dice" in reason, reason

            assert errors == []
            foreign = [url for url in requests if not url.startswith((server.url, "blob:", "data:"))]
            assert foreign == [], f"the page fetched from elsewhere: {foreign}"

            # The statistics table shows the job's statistics.json volumes.
            if statistics is None:
                pytest.skip("the server gives no statistics (GET /jobs/{id}/statistics and statistics.json: 404)")
            page.wait_for_function("() => document.querySelectorAll('#statistics tbody tr').length > 0")
            for target in TARGETS:
                row = page.locator(f"#statistics tbody tr[data-target={target}]")
                volume = float(row.locator("td[data-field=volume_ml]").inner_text())
                assert volume == pytest.approx(statistics["targets"][target]["volume_ml"], abs=0.05)
                assert volume > 10  # both organs are large on these slices
        finally:
            browser.close()
