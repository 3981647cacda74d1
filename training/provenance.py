"""Provenance a bundle can carry anywhere: data folders relative to the repository (or by name), no hosts.

A bundle is copied between machines and published; an absolute path or a host name in it says
nothing useful there and leaks where it was made. Folders inside the repository are recorded
relative to its root, others as ``<parent>/<name>`` (e.g. ``data/ts-examples``), and the
datasets' names are recorded beside them by the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def repository_root() -> Path:
    return Path(__file__).resolve().parents[1]


def portable_path(path: str | Path, root: Path | None = None) -> str:
    """``path`` relative to the repository root when inside it, else its last two components."""
    resolved = Path(path).resolve()
    base = (root or repository_root()).resolve()
    try:
        return resolved.relative_to(base).as_posix()
    except ValueError:
        return "/".join(resolved.parts[-2:])


def portable_provenance(provenance: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
    """A copy of ``provenance`` with data folders and the parent bundle's path made portable and the host dropped."""
    out = {k: v for k, v in provenance.items() if k != "host"}
    if isinstance(out.get("data"), list):
        out["data"] = [portable_path(p, root) if isinstance(p, str) and p.startswith("/") else p for p in out["data"]]
    parent = out.get("init_from")
    if isinstance(parent, dict) and isinstance(parent.get("path"), str) and parent["path"].startswith("/"):
        out["init_from"] = {**parent, "path": portable_path(parent["path"], root)}
    return out
