"""The job function with a real (tiny, random) bundle, real files, and a record in memory."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import Volume, write_truncated_gzip_nifti
from worker.contracts import SegmentationRequest, job_dir, new_job_id
from worker.reporting import RecordReporter
from worker.runtime import WorkerRuntime, current_runtime, load_runtime
from worker.tasks import run_segmentation


class Record:
    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    def update(self, fields: Mapping[str, Any]) -> None:
        self.fields.update(fields)
        self.history.append(dict(fields))


@pytest.fixture(scope="module")
def runtime(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerRuntime:
    return load_runtime(tiny_bundle, tmp_path_factory.mktemp("storage"), device="cpu")


def _stage(runtime: WorkerRuntime, source: Path, targets: tuple[str, ...] = ("liver", "pancreas")) -> SegmentationRequest:
    request = SegmentationRequest(
        job_id=new_job_id(), input_name="input.nii.gz", targets=targets, ensemble=2, steps=2, seed=0
    )
    directory = job_dir(runtime.storage_root, request.job_id)
    directory.mkdir(parents=True)
    shutil.copyfile(source, directory / request.input_name)
    return request


def test_job_writes_all_results_atomically_and_reports_progress(runtime: WorkerRuntime, phantom_volume: Volume) -> None:
    request = _stage(runtime, phantom_volume.path)
    record = Record()
    result = run_segmentation(request.to_payload(), runtime=runtime, reporter=RecordReporter(record.update))

    expected = sorted(
        ["liver_mean.nii.gz", "liver_variance.nii.gz", "pancreas_mean.nii.gz", "pancreas_variance.nii.gz",
         "labels.nii.gz", "labels.json", "statistics.json"]
    )
    assert result == {"job_id": request.job_id, "results": expected}
    directory = job_dir(runtime.storage_root, request.job_id)
    assert sorted(p.name for p in (directory / "results").iterdir()) == expected
    assert sorted(p.name for p in directory.iterdir()) == ["input.nii.gz", "results"]  # no temp dir left

    assert record.history[0]["status"] == "started"
    assert record.fields["status"] == "finished" and record.fields["progress"] == 100
    assert record.fields["results"] == expected and record.fields["finished_at"]
    progress = [h["progress"] for h in record.history if "progress" in h]
    assert progress == sorted(progress) and len(progress) > 2

    mean = nib.load(directory / "results" / "liver_mean.nii.gz")
    assert mean.shape == phantom_volume.image.shape
    np.testing.assert_allclose(mean.affine, phantom_volume.affine, atol=1e-4)


def test_unreadable_input_fails_in_words_and_leaves_no_results(
    runtime: WorkerRuntime, phantom_volume: Volume, tmp_path: Path
) -> None:
    broken = write_truncated_gzip_nifti(phantom_volume, tmp_path / "broken.nii.gz")
    request = _stage(runtime, broken)
    record = Record()
    with pytest.raises(Exception):
        run_segmentation(request.to_payload(), runtime=runtime, reporter=RecordReporter(record.update))
    assert record.fields["status"] == "failed"
    assert record.fields["error"].startswith("invalid input:")
    assert "Traceback" not in record.fields["error"] and str(runtime.storage_root) not in record.fields["error"]
    assert sorted(p.name for p in job_dir(runtime.storage_root, request.job_id).iterdir()) == ["input.nii.gz"]


def test_missing_upload_fails_with_a_reason(runtime: WorkerRuntime, phantom_volume: Volume) -> None:
    request = _stage(runtime, phantom_volume.path)
    (job_dir(runtime.storage_root, request.job_id) / "input.nii.gz").unlink()
    record = Record()
    with pytest.raises(FileNotFoundError):
        run_segmentation(request.to_payload(), runtime=runtime, reporter=RecordReporter(record.update))
    assert record.fields["status"] == "failed" and "missing" in record.fields["error"]


def test_malformed_payload_fails_the_record() -> None:
    record = Record()
    with pytest.raises(ValueError):
        run_segmentation({"job_id": "nope"}, reporter=RecordReporter(record.update))
    assert record.fields["status"] == "failed" and "malformed" in record.fields["error"]


def test_runtime_is_only_found_inside_a_worker() -> None:
    with pytest.raises(RuntimeError, match="latentseg worker"):
        current_runtime()


def test_a_dicom_job_without_seg_writes_nifti_on_the_series_grid_and_a_picture(runtime: WorkerRuntime, tmp_path: Path) -> None:
    from model.io.dicom_io import read_dicom_series
    from tests.reliability.dicom_zips import CT_FILES, series_zip

    if len(CT_FILES) != 3:
        pytest.skip("real data not available: the shared dicom-ct3slice series is absent")
    source = tmp_path / "series.zip"
    series_zip(source, with_clutter=False)
    request = SegmentationRequest(
        job_id=new_job_id(), input_name="input.zip", targets=("liver",), ensemble=2, steps=2, seed=0, dicom_seg=False
    )
    directory = job_dir(runtime.storage_root, request.job_id)
    directory.mkdir(parents=True)
    shutil.copyfile(source, directory / "input.zip")
    record = Record()
    result = run_segmentation(request.to_payload(), runtime=runtime, reporter=RecordReporter(record.update))
    assert result["results"] == sorted(
        ["liver_mean.nii.gz", "liver_variance.nii.gz", "labels.nii.gz", "labels.json", "preview.png",
         "statistics.json"]
    )
    assert record.fields["bundle"] == {"name": runtime.bundle.name, "version": runtime.bundle.version}
    progress = [h["progress"] for h in record.history if "progress" in h]
    assert progress == sorted(progress) and progress[-1] == 100
    labels = nib.load(directory / "results" / "labels.nii.gz")
    np.testing.assert_allclose(labels.affine, read_dicom_series(source).volume.affine, atol=1e-4)
    assert labels.shape == (512, 512, 3)


@pytest.fixture
def full_disk(tiny_bundle: Path, tmp_path: Path) -> Iterator[WorkerRuntime]:
    """A runtime whose storage is a 4 MB tmpfs (needs root and mount(8); skips elsewhere)."""
    import os
    import subprocess

    point = tmp_path / "small-fs"
    point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield load_runtime(tiny_bundle, point / "storage", device="cpu")
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_disk_fails_the_job_as_storage_full_with_its_progress(full_disk: WorkerRuntime,
                                                                      phantom_volume: Volume) -> None:
    import os

    request = _stage(full_disk, phantom_volume.path)
    directory = job_dir(full_disk.storage_root, request.job_id)
    stats = os.statvfs(directory)
    (directory.parent / "filler").write_bytes(b"\0" * max(stats.f_bavail * stats.f_frsize - 8192, 0))
    record = Record()
    with pytest.raises(OSError):
        run_segmentation(request.to_payload(), runtime=full_disk, reporter=RecordReporter(record.update))
    error = record.fields["error"]
    assert record.fields["status"] == "failed" and error.startswith("storage full"), error
    assert "reached" in error and record.fields.get("progress", 0) < 100, record.fields
    assert sorted(p.name for p in directory.iterdir()) == ["input.nii.gz"]  # nothing half-written left
