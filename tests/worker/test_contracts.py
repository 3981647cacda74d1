"""Payloads and names shared by the API and the workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.contracts import (
    JobState,
    PayloadError,
    SegmentationRequest,
    decode_fields,
    encode_fields,
    is_job_id,
    job_dir,
    new_job_id,
    record_key,
)


def _request(**overrides: object) -> SegmentationRequest:
    fields: dict = {"job_id": new_job_id(), "input_name": "input.nii.gz", "targets": ("liver",), "ensemble": 2, "steps": 3, "seed": 0}
    fields.update(overrides)
    return SegmentationRequest(**fields)


def test_payload_round_trips_through_json_types() -> None:
    request = _request(targets=("liver", "pancreas"), seed=7)
    payload = request.to_payload()
    assert payload["targets"] == ["liver", "pancreas"]
    assert SegmentationRequest.from_payload(payload) == request


@pytest.mark.parametrize(
    "overrides",
    [
        {"job_id": "../../etc"},
        {"input_name": "../input.nii.gz"},
        {"input_name": "evil.nii.gz"},
        {"targets": ()},
        {"ensemble": 0},
        {"steps": True},
        {"seed": -1},
    ],
)
def test_bad_payloads_are_refused(overrides: dict) -> None:
    with pytest.raises(PayloadError):
        _request(**overrides)


def test_missing_payload_fields_are_payload_errors() -> None:
    with pytest.raises(PayloadError):
        SegmentationRequest.from_payload({"job_id": new_job_id()})


def test_job_ids_are_random_hex_and_paths_stay_under_storage(tmp_path: Path) -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_job_id(i) for i in ids)
    job_id = ids.pop()
    assert job_dir(tmp_path, job_id) == tmp_path / "jobs" / job_id
    assert record_key("q", job_id) == f"latentseg:q:job:{job_id}"


def test_record_fields_encode_as_json_strings() -> None:
    fields = {"status": "queued", "progress": 0, "targets": ["liver"], "error": None}
    encoded = encode_fields(fields)
    assert all(isinstance(v, str) for v in encoded.values())
    assert decode_fields({k.encode(): v.encode() for k, v in encoded.items()}) == fields


def test_terminal_states() -> None:
    assert {s for s in JobState if s.is_terminal} == {JobState.FINISHED, JobState.FAILED, JobState.CANCELED}


def test_dicom_input_and_output_flags_round_trip_and_old_payloads_read_as_off() -> None:
    request = _request(input_name="input.zip", dicom_seg=True, fractional=True)
    assert request.is_dicom and SegmentationRequest.from_payload(request.to_payload()) == request
    old = {k: v for k, v in _request().to_payload().items() if k not in ("dicom_seg", "fractional")}
    parsed = SegmentationRequest.from_payload(old)
    assert parsed.dicom_seg is False and parsed.fractional is False and not parsed.is_dicom


@pytest.mark.parametrize("overrides", [{"fractional": True}, {"dicom_seg": "yes"}, {"input_name": "input_dicom.zip"}])
def test_bad_output_flags_are_refused(overrides: dict) -> None:
    with pytest.raises(PayloadError):
        _request(**overrides)


@pytest.mark.parametrize("option", ["largest_component", "exclusive"])
def test_post_processing_options_round_trip_and_old_payloads_read_as_the_bundle_default(option: str) -> None:
    for value in (True, False, None):
        request = _request(**{option: value})
        assert SegmentationRequest.from_payload(request.to_payload()) == request
    old = {k: v for k, v in _request().to_payload().items() if k != option}
    assert getattr(SegmentationRequest.from_payload(old), option) is None
    with pytest.raises(PayloadError, match=option):
        _request(**{option: "yes"})
