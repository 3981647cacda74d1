"""The web page at `/` in headless Chromium (Debian's `chromium`, driven by Playwright with
`executable_path`, no browser download), against a real `latentseg serve` in embedded mode.

Upload a volume, pick a target from the list and one in plain words, watch the job finish,
see the preview, download a result, and take a screenshot. Skips with the reason when
Chromium or the `playwright` package is missing (CI installs both: see the final report).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Process, Volume


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")


def test_page_is_served_with_a_strict_policy(start_server: Callable[..., Process], tiny_bundle: Path) -> None:
    server = start_server(args=["--bundle", str(tiny_bundle), "--device", "cpu"])
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert 'id="target-list"' in page.text and "/segment?" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets


def test_upload_pick_watch_preview_download(
    start_server: Callable[..., Process], tiny_bundle: Path, small_nifti: Volume, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    executable = _chromium()
    server = start_server(args=["--bundle", str(tiny_bundle), "--device", "cpu"])
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page.goto(server.url + "/")
            page.wait_for_selector("input[name=target][value=liver]")
            page.fill("#filter", "liv")  # the list filters as you type
            assert page.is_visible("input[value=liver]") and not page.is_visible("input[value=spleen]")
            page.check("input[name=target][value=liver]")
            page.fill("#free", "the left kidney")
            page.fill("#ensemble", "1")
            page.fill("#steps", "1")
            page.set_input_files("#file", str(small_nifti.path))
            page.click("#submit")
            page.wait_for_function(
                "() => document.getElementById('preview').complete"
                " && document.getElementById('preview').naturalWidth > 0",
                timeout=180_000,
            )
            assert "finished" in page.inner_text("#status")
            assert page.inner_text("#error") == ""
            with page.expect_download() as download_info:
                page.click("#files a[data-name='labels.json']")
            legend = json.loads(Path(download_info.value.path()).read_text())
            assert sorted(legend.values()) == ["kidney_left", "liver"]
            shot = tmp_path / "web-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # a user error comes back as words on the page
            page.uncheck("input[name=target][value=liver]")
            page.fill("#free", "kidney")
            page.click("#submit")
            page.wait_for_function("() => document.getElementById('error').textContent.length > 0")
            assert "without a side" in page.inner_text("#error")
        finally:
            browser.close()
