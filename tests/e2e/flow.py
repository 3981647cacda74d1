"""Client-side steps shared by the end-to-end tests: submit, batch-poll, download, check outputs."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np

from tests.conftest import Volume

TERMINAL = ("finished", "failed", "canceled")


def submit(http: httpx.Client, path: Path, targets: str, **params: Any) -> str:
    with path.open("rb") as fh:
        response = http.post("/segment", params={"targets": targets, **params}, files={"file": (path.name, fh)})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def poll(http: httpx.Client, job_ids: list[str], timeout_s: float = 300.0) -> dict[str, dict[str, Any]]:
    """Batch-poll ``GET /jobs?ids=`` until every job is terminal; checks progress never goes back."""
    deadline = time.monotonic() + timeout_s
    last_progress = {job_id: 0 for job_id in job_ids}
    while True:
        body = http.get("/jobs", params={"ids": ",".join(job_ids)}).json()
        assert body["missing"] == []
        states = {job["job_id"]: job for job in body["jobs"]}
        for job_id, state in states.items():
            assert 0 <= state["progress"] <= 100
            assert state["progress"] >= last_progress[job_id] or state["status"] == "failed"
            last_progress[job_id] = state["progress"]
        if all(s["status"] in TERMINAL for s in states.values()):
            return states
        assert time.monotonic() < deadline, f"jobs not done after {timeout_s} s: {states}"
        time.sleep(0.3)


def download_results(http: httpx.Client, job_id: str, out_dir: Path) -> dict[str, Path]:
    manifest = http.get(f"/jobs/{job_id}/results")
    assert manifest.status_code == 200, manifest.text
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for item in manifest.json()["files"]:
        response = http.get(item["url"])
        assert response.status_code == 200
        assert len(response.content) == item["size"]
        paths[item["name"]] = out_dir / item["name"]
        paths[item["name"]].write_bytes(response.content)
    archive = http.get(manifest.json()["archive_url"])
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        assert sorted(Path(n).name for n in zf.namelist()) == sorted(paths)
    return paths


def check_mean_and_variance(paths: dict[str, Path], targets: list[str], volume: Volume) -> dict[str, np.ndarray]:
    """Each target's mean/variance NIfTI has the input's shape and affine; mean in [0, 1]; variance >= 0."""
    means: dict[str, np.ndarray] = {}
    for target in targets:
        for kind in ("mean", "variance"):
            image = nib.load(paths[f"{target}_{kind}.nii.gz"])
            data = np.asarray(image.dataobj, dtype=np.float32)
            assert data.shape == volume.image.shape, (target, kind, data.shape)
            np.testing.assert_allclose(image.affine, volume.affine, atol=1e-4)
            assert np.all(np.isfinite(data))
            if kind == "mean":
                assert data.min() >= 0.0 and data.max() <= 1.0
                means[target] = data
            else:
                assert data.min() >= 0.0
    assert "labels.nii.gz" in paths and "labels.json" in paths
    return means


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)
