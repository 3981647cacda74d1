"""The API answers the error family (model.errors) in one place (service.api_surface): a UserError
raised in a handler path gives its class's status, headers and the one error body; a ServerFault
gives its 5xx without its details."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.errors import InputError, ServerFault
from service.queueing.jobs import AdmissionRefused
from service.main import create_app
from service.settings import ServiceSettings
from service.slow_clients import UploadStalled
from service.queueing.storage import StorageFull

RETRY_AFTER_S = 7


class _Broken(ServerFault):
    """A fault whose message must not reach the client."""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(storage_dir=tmp_path / "storage", bundle=tmp_path / "no-bundle", retry_after_s=RETRY_AFTER_S)
    app = create_app(settings)
    raised: dict[str, Exception] = {
        "input": InputError("the volume has 2 dimensions; a CT volume has 3"),
        "admission": AdmissionRefused("the queue is full (4 jobs); retry later"),
        "stalled": UploadStalled("the upload took longer than 5 s"),
        "fault": _Broken("/srv/storage/jobs/secret/input.nii.gz is gone"),
        "full": StorageFull("no space left"),
    }

    @app.get("/raise/{what}")
    def raise_it(what: str) -> None:  # a sync handler: raised in the thread pool, as the routes' steps are
        if what == "target":
            app.state.services.vocabulary.get("livr")
        raise raised[what]

    with TestClient(app) as test_client:
        yield test_client


def test_an_input_error_gives_its_status_and_the_one_error_body(client: TestClient) -> None:
    response = client.get("/raise/input")
    assert response.status_code == 422
    assert response.json() == {"detail": "the volume has 2 dimensions; a CT volume has 3", "status": 422}
    assert response.headers["content-type"] == "application/json"
    assert "retry-after" not in response.headers


def test_status_and_headers_come_from_the_class(client: TestClient) -> None:
    refused = client.get("/raise/admission")
    assert refused.status_code == 429 and refused.headers["retry-after"] == str(RETRY_AFTER_S)
    assert refused.json() == {"detail": "the queue is full (4 jobs); retry later", "status": 429}
    stalled = client.get("/raise/stalled")
    assert stalled.status_code == 408 and stalled.headers["connection"] == "close"
    assert stalled.json() == {"detail": "the upload took longer than 5 s", "status": 408}


def test_an_unknown_target_gives_the_structured_detail(client: TestClient) -> None:
    response = client.get("/raise/target")
    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"detail", "status"} and body["status"] == 422
    detail = body["detail"]
    assert set(detail) == {"message", "unknown", "valid", "suggestions"}
    assert detail["message"].startswith("unknown target: 'livr'") and detail["unknown"] == ["livr"]
    assert "liver" in detail["valid"] and "liver" in detail["suggestions"]["livr"]


def test_a_server_fault_is_logged_and_answered_without_its_details(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="service.api_surface"):
        response = client.get("/raise/fault")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error; the server log has the details", "status": 500}
    assert "secret" not in response.text
    assert any(record.exc_info and record.exc_info[1] is not None for record in caplog.records), caplog.records
    full = client.get("/raise/full")  # a ServerFault with its own answer
    assert full.status_code == 507 and full.headers["retry-after"] == "60"
    assert full.json()["detail"].startswith("storage full:")
