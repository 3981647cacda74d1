"""model.io.dicomweb: settings, the CT-series rule, auth on the wire (a real local HTTP server), and
retrieval caps against a real Orthanc (skipped when it is not installed)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from model.io.dicomweb import (
    DicomwebError,
    DicomwebSettings,
    RetrievalLimits,
    SeriesCandidate,
    SeriesChoiceError,
    choose_ct_series,
    make_client,
    retrieve_series_zip,
    search_series,
)
from tests.orthanc import needs_orthanc, start_orthanc
from tests.reliability.dicom_zips import CT_FILES, needs_series


def _series(uid: str, modality: str, instances: int, description: str = "") -> SeriesCandidate:
    return SeriesCandidate(series_uid=uid, modality=modality, instances=instances, description=description)


def test_the_rule_takes_the_ct_series_with_the_most_instances() -> None:
    chosen = choose_ct_series("1.2", [_series("1", "CT", 3), _series("2", "CT", 120), _series("3", "MR", 400),
                                      _series("4", "SEG", 1)])
    assert chosen.series_uid == "2"


@pytest.mark.parametrize(
    ("candidates", "fragment", "named"),
    [
        ([_series("9", "MR", 40, "T1"), _series("8", "CT", 1, "scout")], "no CT series", {"9", "8"}),
        ([_series("1", "CT", 50), _series("2", "CT", 50), _series("3", "CT", 10)], "give series_uid", {"1", "2"}),
        ([], "not found", set()),
    ],
)
def test_the_rule_refuses_what_it_cannot_decide(candidates: list[SeriesCandidate], fragment: str, named: set[str]) -> None:
    with pytest.raises(SeriesChoiceError, match=fragment) as caught:
        choose_ct_series("1.2.3", candidates)
    assert {c.series_uid for c in caught.value.candidates} == named
    for uid in named:
        assert uid in str(caught.value)


def test_settings_check_urls_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("LATENTSEG_DICOMWEB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LATENTSEG_DICOMWEB_URL", "https://pacs.example.org/dicom-web/")
    settings = DicomwebSettings()
    assert settings.url == "https://pacs.example.org/dicom-web" and settings.destination == settings.url
    assert settings.verify_tls is True and settings.auth == "none"
    assert DicomwebSettings(push_url="http://other:8042/dicom-web").destination == "http://other:8042/dicom-web"
    for bad, fragment in (
        ({"url": "ftp://pacs/dicom-web"}, "http"),
        ({"url": "http://user:secret@pacs/dicom-web"}, "credentials"),
        ({"auth": "basic", "username": "u"}, "PASSWORD"),
        ({"auth": "bearer"}, "TOKEN"),
    ):
        with pytest.raises(ValidationError, match=fragment) as caught:
            DicomwebSettings(**bad)
        assert "secret" not in str(caught.value)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append({"path": self.path, "authorization": self.headers.get("Authorization", "")})
        answer: list[dict[str, object]] = []
        if self.path.startswith("/dicom-web/studies/9.9/series?"):  # a PACS that gives no instance counts
            answer = [{"0020000E": {"vr": "UI", "Value": ["9.9.1"]}, "00080060": {"vr": "CS", "Value": ["CT"]}}]
        elif self.path.startswith("/dicom-web/studies/9.9/series/9.9.1/instances"):
            answer = [{"00080018": {"vr": "UI", "Value": [f"9.9.1.{n}"]}} for n in range(7)]
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()


def test_auth_goes_on_the_wire(recorder: str) -> None:
    basic = DicomwebSettings(url=recorder, auth="basic", username="latentseg", password="pw")
    assert search_series(make_client(basic), "1.2.3") == []
    bearer = DicomwebSettings(url=recorder, auth="bearer", token="tok-123")
    search_series(make_client(bearer), "1.2.3")
    search_series(make_client(DicomwebSettings(url=recorder)), "1.2.3")
    first, second, third = _Recorder.seen
    assert first["authorization"] == "Basic " + base64.b64encode(b"latentseg:pw").decode()
    assert second["authorization"] == "Bearer tok-123"
    assert third["authorization"] == ""
    assert first["path"].startswith("/dicom-web/studies/1.2.3/series")
    assert make_client(basic)._session.verify is True  # TLS verification on unless turned off


def test_an_unreachable_source_is_one_reason_without_credentials() -> None:
    from tests.conftest import find_free_port

    url = f"http://127.0.0.1:{find_free_port()}/dicom-web"
    settings = DicomwebSettings(url=url, auth="basic", username="u", password="hunter2", timeout_s=2)
    with pytest.raises(DicomwebError, match=r"^source unreachable: http://127\.0\.0\.1:\d+/dicom-web") as caught:
        search_series(make_client(settings), "1.2.3")
    assert "hunter2" not in str(caught.value)


@needs_orthanc
@needs_series
def test_retrieval_stops_at_the_upload_caps(tmp_path: Path) -> None:
    import pydicom

    orthanc = start_orthanc(tmp_path / "orthanc")
    try:
        orthanc.upload(CT_FILES)
        first = pydicom.dcmread(CT_FILES[0], stop_before_pixels=True)
        client = make_client(DicomwebSettings(url=orthanc.dicomweb_url))
        study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        out = tmp_path / "input.zip"
        assert retrieve_series_zip(client, study, series, out, RetrievalLimits(max_bytes=10**9, max_files=10)) == 3
        size = out.stat().st_size
        out.unlink()
        for limits, fragment in (
            (RetrievalLimits(max_bytes=10**9, max_files=2), "more than 2 instances"),
            (RetrievalLimits(max_bytes=size // 2, max_files=10), f"limit of {size // 2} bytes"),
        ):
            with pytest.raises(DicomwebError, match=fragment):
                retrieve_series_zip(client, study, series, out, limits)
            assert sorted(p.name for p in tmp_path.iterdir()) == ["orthanc"]  # no partial file left
        with pytest.raises(DicomwebError, match="^series not found: 1.2.3.4"):
            retrieve_series_zip(client, study, "1.2.3.4", out, RetrievalLimits(max_bytes=10**9, max_files=10))
    finally:
        orthanc.stop()


def test_a_pacs_without_series_counts_gets_its_instances_counted(recorder: str) -> None:
    (candidate,) = search_series(make_client(DicomwebSettings(url=recorder)), "9.9")
    assert (candidate.series_uid, candidate.modality, candidate.instances) == ("9.9.1", "CT", 7)
    assert choose_ct_series("9.9", [candidate]).series_uid == "9.9.1"
