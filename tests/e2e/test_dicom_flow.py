"""End to end with DICOM: a real series zip through `latentseg serve` (RQ, real Redis) and a
`latentseg worker` process, read back with pydicom/highdicom and compared with labels.nii.gz;
`latentseg submit` with a series folder; a NIfTI job asking for a FRACTIONAL DICOM-SEG.

The tiny random bundle makes the masks meaningless: the checks are geometry (the series' own
grid), agreement between the SEG and the NIfTI outputs, references and codes.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import highdicom as hd
import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest

from model.io.dicom_io import read_dicom_series
from model.targets.vocabulary import default_vocabulary
from tests.conftest import LATENTSEG, Volume, clean_env
from tests.e2e.flow import download_results, poll
from tests.reliability.dicom_zips import PATIENT_ID, PATIENT_NAME, SERIES, needs_series, private_series_zip

pytestmark = pytest.mark.slow
QUICK = {"ensemble": 2, "steps": 2}


def _seg_frames(seg_path: Path, sop_uids: list[str]) -> np.ndarray:
    """(slices, rows, columns, segments) in source order."""
    return np.asarray(hd.seg.segread(seg_path).get_pixels_by_source_instance(sop_uids))


def _reorienter(source_affine: np.ndarray, target_affine: np.ndarray):  # type: ignore[no-untyped-def]
    """Axis flips/permutations taking an array on ``source_affine`` to the same voxels on ``target_affine``."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(source_affine), nib.orientations.io_orientation(target_affine)
    )

    def apply(array: np.ndarray) -> np.ndarray:
        out = nib.orientations.apply_orientation(array, transform)
        moved = source_affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
        np.testing.assert_allclose(moved, target_affine, atol=1e-4)  # really the same grid
        return out

    return apply


@needs_series
def test_dicom_zip_in_seg_on_the_series_grid_out(
    start_server, start_worker, redis_url: str, rq_queue_name: str, tiny_bundle: Path,  # type: ignore[no-untyped-def]
    phantom_volume: Volume, tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    worker = start_worker(rq_queue_name, storage, tiny_bundle)
    server = start_server(env={"REDIS_URL": redis_url, "LATENTSEG_QUEUE": rq_queue_name,
                               "LATENTSEG_STORAGE_DIR": str(storage)})
    upload = tmp_path / "upload.zip"
    upload.write_bytes(private_series_zip())
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        with upload.open("rb") as fh:
            response = http.post("/segment", params={"targets": "liver, left kidney", **QUICK},
                                 files={"file": ("Roe_Jane.zip", fh, "application/zip")})
        assert response.status_code == 202, response.text
        dicom_job = response.json()["job_id"]
        nifti_fractional = http.post(
            "/segment", params={"targets": "spleen", "fractional": "true", **QUICK},
            content=phantom_volume.path.read_bytes(),
        ).json()["job_id"]
        states = poll(http, [dicom_job, nifti_fractional])
        for job_id in (dicom_job, nifti_fractional):
            assert states[job_id]["status"] == "finished", states[job_id]
            assert states[job_id]["bundle"]["name"] == "random-tiny" and states[job_id]["bundle"]["version"]

        # ---- DICOM in: NIfTI and BINARY SEG on the series' grid, referencing the series
        paths = download_results(http, dicom_job, tmp_path / "dicom")
        assert {"segmentation.dcm", "preview.png", "labels.nii.gz", "liver_mean.nii.gz"} <= set(paths)
        assert "dicom_ct.zip" not in paths  # the SEG references the uploaded series itself
        manifest = http.get(f"/jobs/{dicom_job}/results").json()
        assert manifest["bundle"]["name"] == "random-tiny"
        seg_response = http.get(f"/jobs/{dicom_job}/results/segmentation.dcm")
        assert seg_response.headers["content-type"] == "application/dicom"
        preview = http.get(f"/jobs/{dicom_job}/preview.png")
        assert preview.status_code == 200 and preview.content[:8] == b"\x89PNG\r\n\x1a\n"

        series = read_dicom_series(upload)
        labels_img = nib.load(paths["labels.nii.gz"])
        np.testing.assert_allclose(labels_img.affine, series.volume.affine, atol=1e-4)
        labels = np.asarray(labels_img.dataobj)
        assert labels.shape == (512, 512, 3)
        frames = _seg_frames(paths["segmentation.dcm"], list(series.info.sop_instance_uids))
        vocabulary = default_vocabulary()
        seg = hd.seg.segread(paths["segmentation.dcm"])
        for number, name in enumerate(("liver", "kidney_left"), start=1):
            target = vocabulary.get(name)
            description = seg.get_segment_description(number)
            assert description.tracking_id == name
            assert description.segmented_property_type.value == target.code.value  # SNOMED CT
            np.testing.assert_array_equal(frames[..., number - 1].astype(bool), (labels == target.id).transpose(2, 1, 0))
        ds = pydicom.dcmread(paths["segmentation.dcm"])
        assert ds.SegmentationType == "BINARY"
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.info.series_instance_uid
        assert ds.StudyInstanceUID == series.info.study_instance_uid
        assert str(ds.PatientName) == PATIENT_NAME  # copied from the source, as DICOM requires

        # ---- NIfTI in, fractional=true: a FRACTIONAL SEG on a derived CT series shipped as dicom_ct.zip
        paths = download_results(http, nifti_fractional, tmp_path / "nifti")
        assert {"segmentation.dcm", "dicom_ct.zip"} <= set(paths)
        derived = read_dicom_series(paths["dicom_ct.zip"])
        # The reader stacks slices along row x column cosines, which may flip the NIfTI's k axis:
        # compare voxel by voxel on the derived series' grid.
        to_derived = _reorienter(phantom_volume.affine, derived.volume.affine)
        np.testing.assert_array_equal(derived.volume.data, to_derived(phantom_volume.image.astype(np.float32)))
        mean = to_derived(np.asarray(nib.load(paths["spleen_mean.nii.gz"]).dataobj))
        assert pydicom.dcmread(paths["segmentation.dcm"]).SegmentationType == "FRACTIONAL"
        frames = _seg_frames(paths["segmentation.dcm"], list(derived.info.sop_instance_uids))
        np.testing.assert_allclose(frames[..., 0], mean.transpose(2, 1, 0), atol=0.5 / 255 + 1e-6)

    # Patient fields are in the SEG (expected) but in no log.
    for log in (server.log_path.read_bytes(), worker.log_path.read_bytes()):
        for secret in (PATIENT_NAME, PATIENT_ID, "Roe", "Jane"):
            assert secret.encode() not in log, secret


@needs_series
def test_submit_cli_sends_a_series_folder(
    start_server, start_worker, redis_url: str, rq_queue_name: str, tiny_bundle: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "storage"
    start_worker(rq_queue_name, storage, tiny_bundle)
    server = start_server(env={"REDIS_URL": redis_url, "LATENTSEG_QUEUE": rq_queue_name,
                               "LATENTSEG_STORAGE_DIR": str(storage)})
    out = tmp_path / "out"
    # The shared folder also holds a SEG, NRRD label maps and text: zipped along, skipped by the server.
    result = subprocess.run(
        [LATENTSEG, "submit", str(SERIES), "--server", server.url, "--targets", "liver", "--ensemble", "2",
         "--steps", "2", "--out", str(out), "--poll-interval", "0.3", "--no-progress"],
        env=clean_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr + server.log()
    case = out / SERIES.name
    names = {p.name for p in case.iterdir()}
    assert {"segmentation.dcm", "labels.nii.gz", "liver_mean.nii.gz", "preview.png"} <= names
    series = read_dicom_series(SERIES)
    labels = np.asarray(nib.load(case / "labels.nii.gz").dataobj)
    frames = _seg_frames(case / "segmentation.dcm", list(series.info.sop_instance_uids))
    np.testing.assert_array_equal(frames[..., 0].astype(bool), (labels == default_vocabulary().get("liver").id).transpose(2, 1, 0))
    with zipfile.ZipFile(storage / "jobs" / result.stdout.split("\t")[1].split()[0] / "input.zip") as archive:
        assert len(archive.namelist()) == 3  # the slices only
