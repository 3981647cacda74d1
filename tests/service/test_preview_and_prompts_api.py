"""`GET /jobs/{id}/preview.png` and plain-word targets in `POST /segment`, on an embedded app
(real worker thread, random tiny bundle, two API keys)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from model.io.preview import target_colour
from model.targets.text_embedding import packaged_model_dir
from service.auth import hash_api_key, new_api_key
from service.main import create_app
from service.settings import ServiceSettings
from tests.conftest import Volume


def _wait_finished(client: TestClient, job_id: str, headers: dict[str, str], timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while (status := client.get(f"/jobs/{job_id}", headers=headers).json())["status"] not in ("finished", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["status"] == "finished", status
    return status


def test_preview_and_plain_word_targets(tmp_path: Path, small_nifti: Volume, tiny_bundle: Path) -> None:
    key_a, key_b = new_api_key(), new_api_key()
    settings = ServiceSettings(
        storage_dir=tmp_path / "storage", bundle=tiny_bundle, device="cpu",
        api_keys={"a": hash_api_key(key_a), "b": hash_api_key(key_b)},
    )
    a = {"Authorization": f"Bearer {key_a}"}
    b = {"Authorization": f"Bearer {key_b}"}
    with TestClient(create_app(settings)) as client:
        # plain words: resolved before the upload is read
        refused = client.post("/segment?targets=liver, kidney", content=small_nifti.path.read_bytes(), headers=a)
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert detail["unknown"] == ["kidney"] and "without a side" in detail["message"]
        assert set(detail["suggestions"]["kidney"]) >= {"kidney_left", "kidney_right"}

        submitted = client.post(
            "/segment?targets=liver, the left kidney&ensemble=1&steps=1",
            content=small_nifti.path.read_bytes(), headers=a,
        )
        assert submitted.status_code == 202, submitted.text
        assert submitted.json()["targets"] == ["liver", "kidney_left"]
        job_id = submitted.json()["job_id"]
        _wait_finished(client, job_id, a)

        assert client.get(f"/jobs/{job_id}/preview.png", headers=b).status_code == 404  # another key's job
        assert client.get(f"/jobs/{'0' * 32}/preview.png", headers=a).status_code == 404
        first = client.get(f"/jobs/{job_id}/preview.png", headers=a)
        assert first.status_code == 200 and first.headers["content-type"] == "image/png"
        picture = np.asarray(Image.open(io.BytesIO(first.content)).convert("RGB"))
        legend = picture[-80:]  # the legend is the bottom band: a swatch per target
        for index in range(2):
            assert np.all(legend == np.asarray(target_colour(index), np.uint8), axis=-1).sum() >= 100

        # drawn once, cached beside the results; the result listing is what the worker wrote
        assert (settings.storage_dir / "jobs" / job_id / "preview.png").is_file()
        names = [f["name"] for f in client.get(f"/jobs/{job_id}/results", headers=a).json()["files"]]
        assert "preview.png" not in names and "labels.nii.gz" in names
        assert client.get(f"/jobs/{job_id}/preview.png", headers=a).content == first.content

        if packaged_model_dir() is not None:  # the optional embedding fallback, in the API process
            free = client.post("/segment?targets=pee bladder&ensemble=1&steps=1",
                               content=small_nifti.path.read_bytes(), headers=a)
            assert free.status_code == 202, free.text
            assert free.json()["targets"] == ["urinary_bladder"]
