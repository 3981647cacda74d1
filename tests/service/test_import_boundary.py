"""The API process never imports torch or MONAI (the api image has neither).

Of ``model/`` it may use only the torch-free folders ``model/targets/`` and ``model/io/``, the bundle
manifest and the error types; and every module in those folders imports without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, Volume

HEAVY = ("torch", "monai", "safetensors", "SimpleITK")
# The parts of model/ the API may import: whole torch-free folders, and these single modules.
TORCH_FREE_FOLDERS = ("model.targets", "model.io")
API_MODULES = ("model", "model.errors", "model.bundle", "model.bundle.manifest")

SCRIPT = f"""
HEAVY, TORCH_FREE_FOLDERS, API_MODULES = {HEAVY!r}, {TORCH_FREE_FOLDERS!r}, {API_MODULES!r}
""" + r"""
import importlib, json, pkgutil, sys
from pathlib import Path
from fastapi.testclient import TestClient
from service.main import create_app
from service.settings import ServiceSettings

def api_may_import(name):
    return name in API_MODULES or any(name == f or name.startswith(f + ".") for f in TORCH_FREE_FOLDERS)

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
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
ours = sorted(m for m in sys.modules if (m.startswith("model.") and not api_may_import(m)) or m in ("worker.tasks", "worker.runtime"))
# Then every module of the torch-free folders, whether the API uses it yet or not.
folder_modules = []
for folder in TORCH_FREE_FOLDERS:
    for info in pkgutil.walk_packages(importlib.import_module(folder).__path__, folder + "."):
        importlib.import_module(info.name)
        folder_modules.append(info.name)
folders_heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"codes": codes, "heavy": heavy, "ours": ours, "folder_modules": folder_modules, "folders_heavy": folders_heavy}))
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
    # each torch-free folder has modules, and importing all of them still brings no torch
    assert {name.rsplit(".", 1)[0] for name in report["folder_modules"]} == set(TORCH_FREE_FOLDERS), report["folder_modules"]
    assert report["folders_heavy"] == []
