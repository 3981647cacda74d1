"""The web page's own files from a real `latentseg serve`: the viewer module and the vendored NiiVue
come from this server (never a CDN), with the right content types and caching, byte for byte the
pinned NiiVue build; nothing outside ``service/static`` is reachable through ``/static``."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT, Process

VENDOR = REPO_ROOT / "service" / "static" / "vendor" / "niivue"


def _pinned() -> tuple[str, str]:
    """(file name, sha256) of the vendored NiiVue, as its README pins them."""
    readme = (VENDOR / "README.md").read_text()
    digest = re.search(r"sha256 of `([^`]+)` \| `([0-9a-f]{64})`", readme)
    assert digest, "the vendored NiiVue README pins no sha256"
    return digest.group(1), digest.group(2)


def test_vendored_niivue_is_the_pinned_build_with_its_licence() -> None:
    name, sha256 = _pinned()
    assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == sha256
    assert "BSD 2-Clause License" in (VENDOR / "LICENSE").read_text()
    viewer = (REPO_ROOT / "service" / "static" / "viewer.js").read_text()
    assert f'from "/static/vendor/niivue/{name}"' in viewer  # the page loads the pinned file


def test_static_files_are_served_with_types_caching_and_no_escape(
    start_server: Callable[..., Process], tiny_bundle: Path
) -> None:
    server = start_server(args=["--bundle", str(tiny_bundle), "--device", "cpu"])
    name, sha256 = _pinned()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        page = http.get("/")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self' 'unsafe-inline'" in policy and "connect-src 'self'" in policy
        assert 'import { JobViewer } from "/static/viewer.js"' in page.text

        library = http.get(f"/static/vendor/niivue/{name}")
        assert library.status_code == 200
        assert library.headers["content-type"].startswith("text/javascript")
        assert "immutable" in library.headers["cache-control"]
        assert hashlib.sha256(library.content).hexdigest() == sha256

        viewer = http.get("/static/viewer.js")
        assert viewer.status_code == 200 and viewer.headers["content-type"].startswith("text/javascript")
        assert viewer.headers["cache-control"] == "no-cache"  # changes with the server, unlike vendor/
        assert http.get("/static/vendor/niivue/LICENSE").headers["content-type"].startswith("text/plain")

        part = http.get(f"/static/vendor/niivue/{name}", headers={"Range": "bytes=0-1023"})
        assert part.status_code == 206 and len(part.content) == 1024
        assert part.content == library.content[:1024]

        # These reach the route as "../../README.md", a file that exists (the repository's README):
        # only the containment check keeps it out.
        escapes = ("/static/%2e%2e/%2e%2e/README.md", "/static/..%2f..%2fREADME.md")
        for path in (*escapes, "/static/nothing.js", "/static/"):
            assert http.get(path).status_code == 404, path
