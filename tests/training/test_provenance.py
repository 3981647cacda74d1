"""training.provenance: bundles record data folders portably and no host name."""

from __future__ import annotations

from pathlib import Path

from training.provenance import portable_path, portable_provenance, repository_root


def test_paths_inside_the_repository_are_relative_others_keep_two_components(tmp_path: Path) -> None:
    root = repository_root()
    assert portable_path(root / "runs" / "real" / "data" / "phantoms") == "runs/real/data/phantoms"
    assert portable_path(tmp_path / "shared" / "data" / "ts-examples") == "data/ts-examples"


def test_provenance_drops_the_host_and_absolute_paths(tmp_path: Path) -> None:
    raw = {
        "host": "vm-123", "seed": 1, "data": [str(tmp_path / "x" / "ds"), "already/relative"],
        "init_from": {"name": "p", "version": "1", "path": str(repository_root() / "model" / "bundles" / "demo")},
    }
    out = portable_provenance(raw)
    assert "host" not in out and out["seed"] == 1
    assert out["data"] == ["x/ds", "already/relative"]
    assert out["init_from"] == {"name": "p", "version": "1", "path": "model/bundles/demo"}
