"""A small HTTP client for the latentseg API (httpx; torch-free). Used by ``latentseg submit``."""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

from model.io.file_walk import regular_files

__all__ = ["ApiError", "LatentsegClient", "input_stem", "zip_folder"]

TERMINAL = frozenset({"finished", "failed", "canceled"})


class ApiError(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


def input_stem(path: Path) -> str:
    """``ct_001.nii.gz`` -> ``ct_001``; ``series.zip`` -> ``series``; a folder -> its name."""
    name = Path(path).name
    if Path(path).is_dir():
        return name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def zip_folder(folder: Path, out: IO[bytes]) -> int:
    """Write every regular file under ``folder`` (recursively, symlinks not followed) into a zip
    on ``out``; returns the member count. The server picks the DICOM slices out of it."""
    count = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in regular_files(folder):
            archive.write(path, arcname=path.relative_to(folder).as_posix())
            count += 1
    return count


@contextmanager
def _upload_body(path: Path) -> Iterator[IO[bytes]]:
    """The bytes to send: the file itself, or a folder zipped on the fly into a temp file."""
    if path.is_dir():
        with tempfile.TemporaryFile(prefix="latentseg-upload-") as spool:
            if zip_folder(path, spool) == 0:
                raise ValueError(f"{path}: the folder holds no files")
            spool.seek(0)
            yield spool
        return
    with path.open("rb") as fh:
        yield fh


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:500]
    if isinstance(detail, dict):
        return str(detail.get("message", detail))
    return str(detail)


class LatentsegClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LatentsegClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail(response))
        return response

    def submit(
        self,
        path: Path,
        targets: str | Sequence[str],
        *,
        ensemble: int | None = None,
        steps: int | None = None,
        seed: int | None = None,
        dicom: bool | None = None,
        fractional: bool = False,
        largest_component: bool | None = None,
        exclusive: bool | None = None,
    ) -> dict[str, Any]:
        """Upload one volume (streamed as the raw body); returns the 202 body (``job_id``, ``status_url``).

        ``path`` is a NIfTI file, a .zip of one DICOM series, or a folder holding one series
        (zipped on the fly). ``dicom`` asks for (or turns off) ``segmentation.dcm``: the server's
        default is on for DICOM input, off for NIfTI; ``fractional`` makes it FRACTIONAL.
        ``largest_component`` overrides the model's connected-component post-processing, ``exclusive``
        whether one-piece organs requested together may share a voxel.
        """
        params: dict[str, Any] = {"targets": targets if isinstance(targets, str) else ",".join(targets)}
        for name, value in (("ensemble", ensemble), ("steps", steps), ("seed", seed)):
            if value is not None:
                params[name] = value
        if dicom is not None:
            params["dicom"] = "true" if dicom else "false"
        if fractional:
            params["fractional"] = "true"
        if largest_component is not None:
            params["largest_component"] = "true" if largest_component else "false"
        if exclusive is not None:
            params["exclusive"] = "true" if exclusive else "false"
        with _upload_body(Path(path)) as fh:
            size = os.fstat(fh.fileno()).st_size
            chunks = iter(lambda: fh.read(1024 * 1024), b"")
            response = self._http.post(
                "/segment",
                params=params,
                content=chunks,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        return self._check(response).json()  # type: ignore[no-any-return]

    def submit_reference(
        self, study_uid: str, targets: str | Sequence[str], *, series_uid: str | None = None, push: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        """Queue a series on the server's DICOMweb source (no upload): ``POST /segment?study_uid=…``.

        ``options`` are :meth:`submit`'s ``ensemble``, ``steps``, ``seed``, ``fractional``, ``largest_component``,
        ``exclusive``.
        """
        params: dict[str, Any] = {"targets": targets if isinstance(targets, str) else ",".join(targets),
                                  "study_uid": study_uid}
        if series_uid is not None:
            params["series_uid"] = series_uid
        if push:
            params["push"] = "true"
        for name, value in options.items():
            if value is not None:
                params[name] = ("true" if value else "false") if isinstance(value, bool) else value
        return self._check(self._http.post("/segment", params=params)).json()  # type: ignore[no-any-return]

    def jobs(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Batch status: id -> status body. Unknown ids raise :class:`ApiError` (404)."""
        ids = list(job_ids)
        body = self._check(self._http.get("/jobs", params={"ids": ",".join(ids)})).json()
        if body.get("missing"):
            raise ApiError(404, f"unknown jobs: {', '.join(body['missing'])}")
        return {job["job_id"]: job for job in body["jobs"]}

    def wait(
        self,
        job_ids: Sequence[str],
        *,
        poll_interval_s: float = 1.0,
        timeout_s: float | None = None,
        on_update: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Batch-poll until every job is finished, failed or canceled."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            states = self.jobs(job_ids)
            if on_update is not None:
                on_update(states)
            if all(s["status"] in TERMINAL for s in states.values()):
                return states
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"jobs not done after {timeout_s} s")
            time.sleep(poll_interval_s)

    def download(self, job_id: str, out_dir: Path) -> list[Path]:
        """Download every result file of a finished job into ``out_dir`` (created)."""
        manifest = self._check(self._http.get(f"/jobs/{job_id}/results")).json()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for item in manifest["files"]:
            name = Path(item["name"]).name  # never trust a path from the network
            target = out_dir / name
            partial = out_dir / f".{name}.part"
            with self._http.stream("GET", item["url"]) as response:
                self._check(response)
                with partial.open("wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
            partial.replace(target)
            written.append(target)
        return written
