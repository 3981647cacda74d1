"""``GET /``: the web page (upload a volume, pick targets, watch progress, then view the job: the CT
with each target's mean mask and variance map in NiiVue, the statistics table, the preview and the
downloads), written against the public API only; ``GET /static/{path}``: its own files.

Everything the page runs comes from this server (``service/static``; NiiVue is vendored under
``static/vendor/``, see its README there): hospitals are offline, so no CDN, and the
Content-Security-Policy allows no other origin.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

__all__ = ["router"]

router = APIRouter(tags=["web"])

# Scripts and styles from this origin (and the page's own inline ones); every request goes to this
# origin; images are blob: URLs (NiiVue's fonts and textures are data: URLs).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}
# Files under vendor/ carry their version in their name: cache them for good.
IMMUTABLE = "public, max-age=31536000, immutable"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}


def _static_root() -> Path:
    return Path(str(resources.files("service").joinpath("static")))


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    page = (_static_root() / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(
        page,
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache", **SECURITY_HEADERS},
    )


@router.get("/static/{path:path}", response_class=FileResponse, include_in_schema=False, name="get_static")
def get_static(path: str) -> FileResponse:
    """One file of ``service/static`` (never outside it), with its content type."""
    root = _static_root().resolve()
    target = (root / path).resolve()
    media_type = STATIC_MEDIA_TYPES.get(target.suffix)
    if not target.is_relative_to(root) or not target.is_file() or media_type is None:
        raise HTTPException(404, f"no static file {path!r}")
    vendored = target.is_relative_to(root / "vendor")
    return FileResponse(
        target,
        media_type=media_type,
        headers={"Cache-Control": IMMUTABLE if vendored else "no-cache", **SECURITY_HEADERS},
    )
