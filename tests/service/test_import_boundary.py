"""The API process never imports torch or MONAI (the api image has neither)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, Volume

SCRIPT = r"""
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from service.main import create_app
from service.settings import ServiceSettings

storage, redis_url, queue, volume = sys.argv[1:5]
create_app(ServiceSettings(storage_dir=Path(storage) / "embedded"))  # built, not started
app = create_app(ServiceSettings(storage_dir=Path(storage) / "rq", redis_url=redis_url, queue=queue))
with TestClient(app) as client:
    codes = [
        client.get("/healthz").status_code,
        client.get("/targets").status_code,
        client.post("/segment?targets=liver", content=Path(volume).read_bytes()).status_code,
        client.get("/readyz").status_code,
    ]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai", "safetensors", "SimpleITK"))
ours = sorted(m for m in sys.modules if m in ("model.bundle", "model.pipeline", "worker.tasks", "worker.runtime"))
print(json.dumps({"codes": codes, "heavy": heavy, "ours": ours}))
"""


def test_api_process_never_imports_torch(tmp_path: Path, redis_url: str, rq_queue_name: str, small_nifti: Volume) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), redis_url, rq_queue_name, str(small_nifti.path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == [200, 200, 202, 503]
    assert report["heavy"] == []
    assert report["ours"] == []
