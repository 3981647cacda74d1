"""A real Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the DICOMweb tests.

:func:`start_orthanc` writes a JSON configuration into a temporary folder (its own storage and
index, HTTP on a free loopback port, remote access off, no DICOM listener, the DICOMweb plugin
loaded from the package's path), starts ``Orthanc`` and waits for its REST API. Tests skip with
the reason when the packages are not installed (``scripts/setup.sh`` installs them as root).

Loading: :meth:`Orthanc.upload` posts DICOM files to Orthanc's REST API (``POST /instances``),
so the tests' QIDO/WADO/STOW traffic is the only DICOMweb traffic.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import find_free_port

ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGINS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def _first(paths: Iterable[str]) -> str | None:
    return next((p for p in paths if Path(p).exists()), None)


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if _first(ORTHANC_BINARIES) is None and shutil.which("Orthanc") is None:
        return "orthanc is not installed (apt-get install orthanc orthanc-dicomweb; scripts/setup.sh does it as root)"
    if _plugin_path() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def _plugin_path() -> str | None:
    found = _first(DICOMWEB_PLUGINS)
    if found is not None:
        return found
    try:  # wherever the package put it
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line for line in listing.splitlines() if line.endswith(".so") or ".so." in line), None)


needs_orthanc = pytest.mark.skipif(orthanc_missing() is not None, reason=orthanc_missing() or "")


@dataclass
class Orthanc:
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.folder / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, object]:
        return {
            "Name": "latentseg-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "DicomPort": find_free_port(),
            "HttpThreadsCount": 8,
            "StableAge": 1,
            "SaveJobs": False,
            "Plugins": [_plugin_path()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
        }

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        missing = orthanc_missing()
        if missing is not None:
            pytest.skip(missing)
        binary = _first(ORTHANC_BINARIES) or shutil.which("Orthanc")
        assert binary is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.dicomweb_url}/studies", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def upload(self, files: Iterable[Path | bytes]) -> list[str]:
        """POST each DICOM file to ``/instances``; returns Orthanc's instance ids."""
        ids = []
        with httpx.Client(base_url=self.url, timeout=30.0) as http:
            for item in files:
                data = item if isinstance(item, bytes) else Path(item).read_bytes()
                response = http.post("/instances", content=data, headers={"Content-Type": "application/dicom"})
                response.raise_for_status()
                ids.append(response.json()["ID"])
        return ids


def dataset_bytes(datasets: Iterable[object]) -> list[bytes]:
    """pydicom Datasets as DICOM file bytes."""
    out = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)  # type: ignore[attr-defined]
        out.append(buffer.getvalue())
    return out


def start_orthanc(folder: Path, port: int | None = None) -> Orthanc:
    return Orthanc(folder=folder, port=port or find_free_port()).start()
