"""End to end with a real PACS: Orthanc (Debian's packages, DICOMweb plugin) as the source and
destination of `latentseg serve` (embedded worker, the tiny random bundle) over DICOMweb.

Orthanc holds the real 3-slice CT (dicom-ct3slice) and a study made from a phantom volume (a CT
series of 24 slices and an MR series), plus an MR-only study and a study with two equal CT
series. The flow: POST /segment?study_uid=… with no body, the worker pulls the series with
WADO-RS, segments it and pushes segmentation.dcm with STOW-RS; the test then queries Orthanc
with QIDO-RS, retrieves the stored SEG and reads it with highdicom: referenced series, segment
labels and SNOMED codes, frames against labels.nii.gz. Faults: the source down at pull, an
unknown series, an MR series, the destination down at push (retried until it comes back, and
reported push_failed when it does not), studies the rule cannot resolve (422).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage, generate_uid

from model.io.dicom_io import read_dicom_series
from model.io.dicom_seg import derive_ct_series
from model.io.dicomweb import DicomwebSettings, make_client
from model.inference.preprocessing import Volume as ModelVolume
from model.targets.vocabulary import default_vocabulary
from tests.conftest import LATENTSEG, Volume, clean_env, find_free_port
from tests.e2e.flow import download_results, poll
from tests.orthanc import Orthanc, dataset_bytes, needs_orthanc, start_orthanc
from tests.reliability.dicom_zips import CT_FILES, needs_series

pytestmark = [pytest.mark.slow, needs_orthanc, needs_series]
QUICK = {"ensemble": 2, "steps": 2}


@dataclass(frozen=True)
class Studies:
    real_study: str
    real_series: str
    phantom_study: str
    phantom_ct_series: str
    phantom_mr_series: str
    mr_study: str
    tied_study: str
    tied_series: tuple[str, str]
    uneven_study: str
    uneven_series: str


def _as_mr(datasets: list[pydicom.Dataset], study_uid: str | None = None, patient_id: str | None = None) -> list:
    series_uid = generate_uid()
    for ds in datasets:
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = "T1 (test)"
        if study_uid is not None:
            ds.StudyInstanceUID = study_uid
            ds.PatientID = patient_id
    return datasets


def _load(pacs: Orthanc, phantom: Volume) -> Studies:
    pacs.upload(CT_FILES)
    real = pydicom.dcmread(CT_FILES[0], stop_before_pixels=True)
    phantom_volume = ModelVolume(data=phantom.image.astype(np.float32), affine=phantom.affine)
    ct = derive_ct_series(phantom_volume, series_description="phantom CT")
    study, patient = ct[0].StudyInstanceUID, ct[0].PatientID
    small = ModelVolume(data=np.zeros((16, 16, 6), np.float32), affine=np.diag([2.0, 2.0, 5.0, 1.0]))
    mr = _as_mr(derive_ct_series(small), study, patient)
    mr_only = _as_mr(derive_ct_series(small))
    tied_a = derive_ct_series(small)
    tied_b = derive_ct_series(small)
    for ds in tied_b:  # same study as tied_a, its own series
        ds.StudyInstanceUID, ds.PatientID = tied_a[0].StudyInstanceUID, tied_a[0].PatientID
    uneven = derive_ct_series(small)  # slices that disagree: one is 2 mm off its place (a gap)
    uneven[-1].ImagePositionPatient = [*uneven[-1].ImagePositionPatient[:2], float(uneven[-1].ImagePositionPatient[2]) + 2.0]
    pacs.upload(dataset_bytes([*ct, *mr, *mr_only, *tied_a, *tied_b, *uneven]))
    return Studies(
        real_study=str(real.StudyInstanceUID), real_series=str(real.SeriesInstanceUID),
        phantom_study=str(study), phantom_ct_series=str(ct[0].SeriesInstanceUID),
        phantom_mr_series=str(mr[0].SeriesInstanceUID), mr_study=str(mr_only[0].StudyInstanceUID),
        tied_study=str(tied_a[0].StudyInstanceUID),
        tied_series=(str(tied_a[0].SeriesInstanceUID), str(tied_b[0].SeriesInstanceUID)),
        uneven_study=str(uneven[0].StudyInstanceUID), uneven_series=str(uneven[0].SeriesInstanceUID),
    )


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, phantom_volume: Volume) -> Iterator[tuple[Orthanc, Studies]]:
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield orthanc, _load(orthanc, phantom_volume)
    finally:
        orthanc.stop()


def _wait_for(http: httpx.Client, job_id: str, predicate: Any, what: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        state = http.get(f"/jobs/{job_id}").json()
        if predicate(state):
            return state
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s} s: {state}"
        time.sleep(0.2)


def _push_done(state: dict[str, Any]) -> bool:
    return state["push_status"] == "pushed" or str(state["push_status"]).startswith("push_failed")


def _stored_segs(orthanc: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """QIDO-RS the study's SEG series at ``orthanc``, then WADO-RS their instances."""
    client = make_client(DicomwebSettings(url=orthanc.dicomweb_url))
    found = client.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": "SEG"})
    datasets = []
    for series in found:
        series_uid = series["0020000E"]["Value"][0]
        datasets += client.retrieve_series(study_uid, series_uid)
    return datasets


def _check_seg_against_labels(seg_ds: pydicom.Dataset, labels_path: Path, source_uids: list[str],
                              series_uid: str, targets: list[str]) -> None:
    vocabulary = default_vocabulary()
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    labels = np.asarray(nib.load(labels_path).dataobj)
    frames = seg.get_pixels_by_source_instance(source_uids)  # (slices, rows, cols, segments)
    assert frames.shape[-1] == len(targets)
    for number, name in enumerate(targets, start=1):
        target = vocabulary.resolve(name)[0]
        description = seg.get_segment_description(number)
        assert (description.segment_label, description.tracking_id) == (target.display, name)
        assert target.code is not None
        assert description.segmented_property_type.value == target.code.value
        assert description.segmented_property_type.scheme_designator == "SCT"
        assert description.segmented_property_category.value == target.category.value
        expected = (labels == target.id).transpose(2, 1, 0)
        if seg_ds.SegmentationType == "BINARY":
            np.testing.assert_array_equal(frames[..., number - 1].astype(bool), expected, err_msg=name)
    return None


def _source_uids(orthanc: Orthanc, study_uid: str, series_uid: str, folder: Path) -> list[str]:
    """The series' SOP Instance UIDs in our reader's slice order (the order of labels.nii.gz's K axis)."""
    client = make_client(DicomwebSettings(url=orthanc.dicomweb_url))
    folder.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(client.retrieve_series(study_uid, series_uid)):
        ds.save_as(folder / f"{n:04d}.dcm", enforce_file_format=True)
    return list(read_dicom_series(folder).info.sop_instance_uids)


def test_pull_segment_push_and_read_the_seg_back_from_the_pacs(
    pacs: tuple[Orthanc, Studies], start_server, tiny_bundle: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    orthanc, studies = pacs
    server = start_server(env={
        "LATENTSEG_BUNDLE": str(tiny_bundle), "LATENTSEG_STORAGE_DIR": str(tmp_path / "storage"),
        "LATENTSEG_DICOMWEB_URL": orthanc.dicomweb_url,
    })
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        # ---- study alone: the rule picks the phantom CT (24 slices) over the MR series of the study
        response = http.post("/segment", params={"targets": "liver, left kidney", "study_uid": studies.phantom_study,
                                                 "push": "true", **QUICK})
        assert response.status_code == 202, response.text
        phantom_job = response.json()["job_id"]
        # ---- study and series given, FRACTIONAL: the real 3-slice CT
        response = http.post("/segment", params={"targets": "liver", "study_uid": studies.real_study,
                                                 "series_uid": studies.real_series, "push": "true",
                                                 "fractional": "true", **QUICK})
        assert response.status_code == 202, response.text
        real_job = response.json()["job_id"]
        # ---- an MR series given explicitly: the worker refuses it with the reason
        mr_job = http.post("/segment", params={"targets": "liver", "study_uid": studies.phantom_study,
                                               "series_uid": studies.phantom_mr_series, **QUICK}).json()["job_id"]
        # ---- a series the PACS does not have
        missing_job = http.post("/segment", params={"targets": "liver", "study_uid": studies.real_study,
                                                    "series_uid": "1.2.3.4.5.6", **QUICK}).json()["job_id"]

        # ---- slices that disagree (a gap in the spacing): refused after retrieval, with the reason
        uneven_job = http.post("/segment", params={"targets": "liver", "study_uid": studies.uneven_study,
                                                   "series_uid": studies.uneven_series, **QUICK}).json()["job_id"]

        states = poll(http, [phantom_job, real_job, mr_job, missing_job, uneven_job])
        assert states[uneven_job]["status"] == "failed", states[uneven_job]
        assert states[uneven_job]["error"].startswith("invalid input: ") and "spacing" in states[uneven_job]["error"]
        assert states[mr_job]["status"] == "failed" and "MR" in states[mr_job]["error"], states[mr_job]
        assert states[missing_job]["status"] == "failed", states[missing_job]
        assert states[missing_job]["error"].startswith("series not found: 1.2.3.4.5.6"), states[missing_job]
        for job_id in (phantom_job, real_job):
            assert states[job_id]["status"] == "finished", states[job_id]
            assert states[job_id]["input_format"] == "dicomweb"
            _wait_for(http, job_id, _push_done, "push done")
        phantom_state = http.get(f"/jobs/{phantom_job}").json()
        assert phantom_state["source"]["series_uid"] == studies.phantom_ct_series
        assert "most instances" in phantom_state["source"]["chosen_by"]
        assert phantom_state["input_shape"] == [96, 96, 24]  # known once the worker has the series
        assert phantom_state["input_spacing"] == pytest.approx([3.0, 3.0, 4.0])
        assert phantom_state["push_status"] == "pushed" and phantom_state["push_attempts"] == 1

        # ---- read back what the PACS stored (QIDO-RS + WADO-RS), compare with the job's own results
        for job_id, study, series, targets, kind in (
            (phantom_job, studies.phantom_study, studies.phantom_ct_series, ["liver", "kidney_left"], "BINARY"),
            (real_job, studies.real_study, studies.real_series, ["liver"], "FRACTIONAL"),
        ):
            state = http.get(f"/jobs/{job_id}").json()
            assert state["push_status"] == "pushed", state
            paths = download_results(http, job_id, tmp_path / job_id)
            stored = _stored_segs(orthanc, study)
            assert [str(ds.SOPInstanceUID) for ds in stored] == state["pushed_instances"]
            (seg_ds,) = stored
            assert seg_ds.SegmentationType == kind
            assert seg_ds.SOPInstanceUID == pydicom.dcmread(paths["segmentation.dcm"]).SOPInstanceUID
            assert seg_ds.StudyInstanceUID == study
            source_uids = _source_uids(orthanc, study, series, tmp_path / f"{job_id}-source")
            _check_seg_against_labels(seg_ds, paths["labels.nii.gz"], source_uids, series, targets)
            if kind == "FRACTIONAL":  # the stored probabilities are the job's means, to the 1/255 step
                frames = hd.seg.Segmentation.from_dataset(seg_ds).get_pixels_by_source_instance(source_uids)
                mean = np.asarray(nib.load(paths["liver_mean.nii.gz"]).dataobj).transpose(2, 1, 0)
                np.testing.assert_allclose(frames[..., 0], mean, atol=0.5 / 255 + 1e-6)
            else:
                assert int(np.asarray(nib.load(paths["labels.nii.gz"]).dataobj).shape[2]) == 24

        # ---- the rule refuses what it cannot resolve, naming the candidates (nothing is queued)
        refused = http.post("/segment", params={"targets": "liver", "study_uid": studies.mr_study})
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert "no CT series" in detail["message"] and [c["modality"] for c in detail["candidates"]] == ["MR"]
        tied = http.post("/segment", params={"targets": "liver", "study_uid": studies.tied_study})
        assert tied.status_code == 422, tied.text
        assert sorted(c["series_uid"] for c in tied.json()["detail"]["candidates"]) == sorted(studies.tied_series)
        assert "give series_uid" in tied.json()["detail"]["message"]
        unknown = http.post("/segment", params={"targets": "liver", "study_uid": "1.2.3.999"})
        assert unknown.status_code == 422 and "not found" in unknown.json()["detail"]["message"]
        for params, fragment in (
            ({"push": "true"}, "need study_uid"),
            ({"study_uid": "not-a-uid"}, "DICOM UID"),
            ({"study_uid": studies.real_study, "dicom": "false"}, "dicom=false"),
        ):
            response = http.post("/segment", params={"targets": "liver", **params})
            assert response.status_code == 422 and fragment in response.text, (params, response.text)
        with_body = http.post("/segment", params={"targets": "liver", "study_uid": studies.real_study}, content=b"x")
        assert with_body.status_code == 422 and "no body" in with_body.text


def test_faults_source_down_at_pull_and_destination_down_at_push(
    pacs: tuple[Orthanc, Studies], start_server, tiny_bundle: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    orthanc, studies = pacs
    source = start_orthanc(tmp_path / "source")
    source.upload(CT_FILES)
    destination = Orthanc(folder=tmp_path / "destination", port=find_free_port())  # not started yet
    try:
        server = start_server(env={
            "LATENTSEG_BUNDLE": str(tiny_bundle), "LATENTSEG_STORAGE_DIR": str(tmp_path / "storage"),
            "LATENTSEG_DICOMWEB_URL": source.dicomweb_url, "LATENTSEG_DICOMWEB_PUSH_URL": destination.dicomweb_url,
            "LATENTSEG_DICOMWEB_PUSH_ATTEMPTS": "6", "LATENTSEG_DICOMWEB_PUSH_BACKOFF_S": "0.5",
            "LATENTSEG_DICOMWEB_PUSH_MAX_BACKOFF_S": "2", "LATENTSEG_DICOMWEB_TIMEOUT_S": "5",
        })
        reference = {"study_uid": studies.real_study, "series_uid": studies.real_series, **QUICK}
        with httpx.Client(base_url=server.url, timeout=60.0) as http:
            # ---- destination down at push: results kept, the push retried, and it lands once the PACS is back
            job = http.post("/segment", params={"targets": "liver", "push": "true", **reference}).json()["job_id"]
            state = _wait_for(http, job, lambda s: str(s["push_status"]).startswith("retrying"), "a failed attempt")
            assert state["status"] == "finished" and "destination unreachable" in state["push_status"], state
            assert http.get(f"/jobs/{job}/results/segmentation.dcm").status_code == 200  # results are not lost
            destination.start()
            state = _wait_for(http, job, _push_done, "push after the destination came back", timeout_s=60)
            assert state["push_status"] == "pushed" and state["push_attempts"] >= 2, state
            assert [str(ds.SOPInstanceUID) for ds in _stored_segs(destination, studies.real_study)] == \
                state["pushed_instances"]
            assert _stored_segs(source, studies.real_study) == []  # pushed to the destination, not the source

            # ---- destination down for good: push_failed with the reason after every attempt
            destination.stop()
            job = http.post("/segment", params={"targets": "liver", "push": "true", "seed": 1, **reference}).json()
            state = _wait_for(http, job["job_id"], lambda s: str(s["push_status"]).startswith("push_failed"),
                              "push given up", timeout_s=90)
            assert state["status"] == "finished" and state["push_attempts"] == 6, state
            assert "destination unreachable" in state["push_status"] and state["pushed_instances"] == []
            assert "segmentation.dcm" in {f["name"] for f in http.get(f"/jobs/{job['job_id']}/results").json()["files"]}

            # ---- source down at pull: the job fails with the reason (the API queued it without a round trip)
            source.stop()
            job = http.post("/segment", params={"targets": "liver", **reference})
            assert job.status_code == 202, job.text
            (state,) = poll(http, [job.json()["job_id"]]).values()
            assert state["status"] == "failed" and state["error"].startswith("source unreachable: "), state
            assert source.dicomweb_url in state["error"]
            # ... and a study-only reference needs the QIDO look-up, which cannot reach the PACS: 503
            refused = http.post("/segment", params={"targets": "liver", "study_uid": studies.real_study})
            assert refused.status_code == 503 and "unreachable" in refused.text, refused.text
    finally:
        source.stop()
        destination.stop()


def test_cli_segment_pulls_from_and_pushes_to_a_pacs(pacs: tuple[Orthanc, Studies], tiny_bundle: Path, tmp_path: Path) -> None:
    _, studies = pacs
    own = start_orthanc(tmp_path / "pacs")  # its own PACS: the SEGs stored here are this test's only
    try:
        own.upload(CT_FILES)
        quick = ["--ensemble", "2", "--steps", "2", "--targets", "liver"]
        # ---- latentseg segment: study alone (the rule), results on disk, the SEG pushed back
        proc = subprocess.run(
            [LATENTSEG, "segment", "--dicomweb", own.dicomweb_url, "--study-uid", studies.real_study, "--push",
             "--out", str(tmp_path / "segment"), "--bundle", str(tiny_bundle), "--quiet", *quick],
            env=clean_env(), capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        pushed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("pushed ")]
        local = pydicom.dcmread(tmp_path / "segment" / "segmentation.dcm")
        assert pushed == [local.SOPInstanceUID]
        assert [ds.SOPInstanceUID for ds in _stored_segs(own, studies.real_study)] == pushed
        assert local.ReferencedSeriesSequence[0].SeriesInstanceUID == studies.real_series

    finally:
        own.stop()


def test_rq_worker_pulls_segments_and_pushes(
    pacs: tuple[Orthanc, Studies], start_server, start_worker, redis_url: str,  # type: ignore[no-untyped-def]
    rq_queue_name: str, tiny_bundle: Path, tmp_path: Path,
) -> None:
    import redis

    from worker.contracts import decode_fields, record_key

    _, studies = pacs
    own = start_orthanc(tmp_path / "pacs")
    try:
        own.upload(CT_FILES)
        dicomweb = {"LATENTSEG_DICOMWEB_URL": own.dicomweb_url}
        storage = tmp_path / "storage"
        # the worker reads its own PACS settings; it also pushes the uncertainty objects
        start_worker(rq_queue_name, storage, tiny_bundle, env={**dicomweb, "LATENTSEG_DICOMWEB_PUSH_UNCERTAINTY": "true"})
        server = start_server(env={"REDIS_URL": redis_url, "LATENTSEG_QUEUE": rq_queue_name,
                                   "LATENTSEG_STORAGE_DIR": str(storage), **dicomweb})
        # latentseg submit --study-uid (the rule picks the series) --push: waits for the job, then the push
        proc = subprocess.run(
            [LATENTSEG, "submit", "--server", server.url, "--study-uid", studies.real_study, "--push",
             "--targets", "liver,spleen", "--ensemble", "2", "--steps", "2", "--out", str(tmp_path / "submit"),
             "--no-progress", "--poll-interval", "0.3"],
            env=clean_env(), capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{studies.real_study}: pushed" in proc.stdout, proc.stdout
        job_id = proc.stdout.splitlines()[0].split("\t")[1]
        results = tmp_path / "submit" / studies.real_study
        paths = {p.name: p for p in results.iterdir()}
        with httpx.Client(base_url=server.url, timeout=60.0) as http:
            state = http.get(f"/jobs/{job_id}").json()
        assert state["push_status"] == "pushed" and state["source"]["series_uid"] == studies.real_series, state
        # the durable record in Redis keeps what the PACS stored
        connection = redis.Redis.from_url(redis_url)
        record = decode_fields(connection.hgetall(record_key(rq_queue_name, job_id)))
        connection.close()
        assert record["push_status"] == "pushed" and record["push_attempts"] == 1
        stored = {str(ds.SegmentationType): ds for ds in _stored_segs(own, studies.real_study)}
        assert sorted(stored) == ["BINARY", "FRACTIONAL"]  # segmentation.dcm and probability.dcm
        source_uids = _source_uids(own, studies.real_study, studies.real_series, tmp_path / "source")
        _check_seg_against_labels(stored["BINARY"], paths["labels.nii.gz"], source_uids, studies.real_series,
                                  ["liver", "spleen"])
        # ... and the variance Parametric Maps: the whole push is in the record, SEG first
        client = make_client(DicomwebSettings(url=own.dicomweb_url))
        maps = client.search_for_instances(
            study_instance_uid=studies.real_study, search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.30"}
        )
        map_uids = sorted(m["00080018"]["Value"][0] for m in maps)
        assert len(map_uids) == 2
        assert record["pushed_instances"][0] == stored["BINARY"].SOPInstanceUID
        assert sorted(record["pushed_instances"]) == sorted(
            [stored["BINARY"].SOPInstanceUID, stored["FRACTIONAL"].SOPInstanceUID, *map_uids]
        )
        first = client.retrieve_instance(studies.real_study, maps[0]["0020000E"]["Value"][0], map_uids[0])
        name = "liver" if "liver" in str(first.ContentDescription) else "spleen"
        variance = np.asarray(nib.load(paths[f"{name}_variance.nii.gz"]).dataobj, dtype=np.float32)
        slice_of = {uid: k for k, uid in enumerate(source_uids)}
        step = float(first.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].RealWorldValueSlope)
        for frame, item in zip(first.pixel_array, first.PerFrameFunctionalGroupsSequence, strict=True):
            k = slice_of[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
            # 16-bit stored values: the job's variance to within one quantisation step
            np.testing.assert_allclose(frame * step, variance[:, :, k].T, rtol=0, atol=step)
    finally:
        own.stop()
