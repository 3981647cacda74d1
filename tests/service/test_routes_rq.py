"""The API in RQ mode against the real Redis, with no worker: what happens before a job runs.

Uses FastAPI's TestClient (HTTP through the ASGI app). The full flow with a worker and uvicorn
is in tests/e2e.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from service.main import create_app
from service.settings import ServiceSettings
from tests.conftest import Volume, find_free_port, write_nifti
from worker.contracts import TASK_PATH, record_key


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, rq_queue_name: str) -> ServiceSettings:
    return ServiceSettings(
        redis_url=redis_url,
        queue=rq_queue_name,
        storage_dir=tmp_path / "storage",
        max_upload_bytes=200_000,
        job_timeout_s=123,
        result_ttl_s=456,
        failure_ttl_s=789,
        record_ttl_s=3600,
    )


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _submit(client: TestClient, volume: Volume, targets: str = "liver,pancreas", **params: object) -> dict:
    response = client.post(
        "/segment", params={"targets": targets, **params}, files={"file": ("../../evil name.nii.gz", volume.path.read_bytes())}
    )
    assert response.status_code == 202, response.text
    return response.json()


def test_submit_queues_a_durable_record_and_an_rq_job_by_dotted_path(
    client: TestClient, settings: ServiceSettings, small_nifti: Volume, redis_url: str
) -> None:
    body = _submit(client, small_nifti, targets="Liver, IVC", ensemble=3, steps=4, seed=9)
    job_id = body["job_id"]
    assert body["targets"] == ["liver", "inferior_vena_cava"]
    assert body["status_url"] == f"/jobs/{job_id}"

    status = client.get(f"/jobs/{job_id}").json()
    assert status["status"] == "queued" and status["progress"] == 0 and status["position"] == 0
    assert status["input_shape"] == list(small_nifti.image.shape)
    assert (status["ensemble"], status["steps"], status["seed"]) == (3, 4, 9)

    connection = redis.Redis.from_url(redis_url)
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    assert job.func_name == TASK_PATH
    assert (job.timeout, job.result_ttl, job.failure_ttl) == (123, 456, 789)
    assert job.kwargs["payload"]["targets"] == ["liver", "inferior_vena_cava"]
    assert job.kwargs["payload"]["input_name"] == "input.nii"  # the validator's canonical copy
    assert 0 < connection.ttl(record_key(settings.queue, job_id)) <= 3600
    # The client's filename never reaches storage.
    stored = sorted(p.name for p in (settings.storage_dir / "jobs" / job_id).iterdir())
    assert stored == ["input.nii", "job.json"]


def test_raw_body_upload_and_queue_positions(client: TestClient, small_nifti: Volume) -> None:
    ids = []
    for seed in range(3):  # different seeds: not duplicates
        response = client.post(f"/segment?targets=liver&seed={seed}", content=small_nifti.path.read_bytes())
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])
    unknown = "f" * 32
    body = client.get("/jobs", params={"ids": ",".join([*ids, unknown, "junk"])}).json()
    assert [j["job_id"] for j in body["jobs"]] == ids
    assert [j["position"] for j in body["jobs"]] == [0, 1, 2]
    assert body["missing"] == [unknown, "junk"]


def test_unknown_target_is_422_listing_valid_names(client: TestClient, small_nifti: Volume, settings: ServiceSettings) -> None:
    response = client.post("/segment?targets=liver,unicorn_gland", content=small_nifti.path.read_bytes())
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["unknown"] == ["unicorn_gland"]
    assert "pancreas" in detail["valid"] and "liver" in detail["valid"]
    assert "unicorn_gland" in detail["message"] and "Valid targets" in detail["message"]
    assert not (settings.storage_dir / "jobs").exists() or not any((settings.storage_dir / "jobs").iterdir())


@pytest.mark.parametrize("params", [{"targets": " , "}, {"targets": "liver", "ensemble": 0}, {"targets": "liver", "ensemble": 10_000}])
def test_bad_parameters_are_422(client: TestClient, small_nifti: Volume, params: dict) -> None:
    assert client.post("/segment", params=params, content=small_nifti.path.read_bytes()).status_code == 422


def test_not_a_nifti_is_415_with_a_message(client: TestClient, settings: ServiceSettings) -> None:
    for files in ({"file": ("scan.nii.gz", b"this is not a volume" * 50)}, None):
        if files:
            response = client.post("/segment?targets=liver", files=files)
        else:
            response = client.post("/segment?targets=liver", content=b"\x89PNG" + bytes(1000))
        assert response.status_code == 415
        assert "NIfTI" in response.json()["detail"]
    assert not any((settings.storage_dir / "jobs").iterdir())
    assert Queue(settings.queue, connection=redis.Redis.from_url(settings.redis_url)).count == 0


def test_malformed_nifti_is_422(client: TestClient, tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "four.nii.gz", np.zeros((4, 4, 4, 2), np.int16), np.eye(4))
    response = client.post("/segment?targets=liver", content=path.read_bytes())
    assert response.status_code == 422 and "3-D" in response.json()["detail"]


def test_upload_over_the_limit_is_413_with_or_without_content_length(
    client: TestClient, settings: ServiceSettings
) -> None:
    big = b"\0" * (settings.max_upload_bytes + 1)
    assert client.post("/segment?targets=liver", content=big).status_code == 413

    def chunked():  # no Content-Length: the cap is enforced while streaming
        for _ in range(4):
            yield b"\0" * 60_000

    response = client.post("/segment?targets=liver", content=chunked())
    assert response.status_code == 413
    files = {"file": ("x.nii", big)}
    assert client.post("/segment?targets=liver", files=files).status_code == 413
    assert not any((settings.storage_dir / "jobs").iterdir())


def test_unknown_job_is_404(client: TestClient) -> None:
    for path in (f"/jobs/{'a' * 32}", "/jobs/not-an-id", f"/jobs/{'a' * 32}/results", f"/jobs/{'a' * 32}/results/x"):
        assert client.get(path).status_code == 404, path
    assert client.delete(f"/jobs/{'b' * 32}").status_code == 404


def test_results_of_a_queued_job_are_409(client: TestClient, small_nifti: Volume) -> None:
    job_id = _submit(client, small_nifti)["job_id"]
    assert client.get(f"/jobs/{job_id}/results").status_code == 409
    assert client.get(f"/jobs/{job_id}/results.zip").status_code == 409


def test_delete_cancels_a_queued_job_then_deletes_it(
    client: TestClient, small_nifti: Volume, settings: ServiceSettings
) -> None:
    job_id = _submit(client, small_nifti)["job_id"]
    queue = Queue(settings.queue, connection=redis.Redis.from_url(settings.redis_url), serializer=JSONSerializer)
    assert queue.count == 1
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    assert queue.count == 0
    # The upload is gone; only the manifest stays, recording the ending (issue 17 item 3).
    assert [p.name for p in (settings.storage_dir / "jobs" / job_id).iterdir()] == ["job.json"]
    assert client.get(f"/jobs/{job_id}").json()["status"] == "canceled"
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert not (settings.storage_dir / "jobs" / job_id).exists()
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_a_job_the_queue_lost_is_enqueued_again_from_storage(
    client: TestClient, small_nifti: Volume, redis_url: str, settings: ServiceSettings
) -> None:
    job_id = _submit(client, small_nifti)["job_id"]
    connection = redis.Redis.from_url(redis_url)
    Job.fetch(job_id, connection=connection, serializer=JSONSerializer).delete()
    status = client.get(f"/jobs/{job_id}").json()
    assert status["status"] == "queued" and status["position"] == 0
    assert Job.fetch(job_id, connection=connection, serializer=JSONSerializer).kwargs["payload"]["job_id"] == job_id
    # Without its stored upload it cannot be rebuilt: then it reads as failed, never queued forever.
    Job.fetch(job_id, connection=connection, serializer=JSONSerializer).delete()
    (settings.storage_dir / "jobs" / job_id / "input.nii").unlink()
    status = client.get(f"/jobs/{job_id}").json()
    assert status["status"] == "failed" and "lost" in status["error"]


def test_targets_health_and_readiness_without_workers(client: TestClient) -> None:
    targets = client.get("/targets").json()["targets"]
    ivc = next(t for t in targets if t["name"] == "inferior_vena_cava")
    assert "ivc" in ivc["synonyms"]
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["workers"] == 0 and "no live worker" in ready.json()["problems"][0]


def test_redis_down_is_a_quick_503(tmp_path: Path, small_nifti: Volume) -> None:
    settings = ServiceSettings(redis_url=f"redis://127.0.0.1:{find_free_port()}/0", storage_dir=tmp_path)
    with TestClient(create_app(settings)) as dead:
        assert dead.get("/healthz").status_code == 200
        assert dead.get(f"/jobs/{'a' * 32}").status_code == 503
        response = dead.post("/segment?targets=liver", content=small_nifti.path.read_bytes())
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert dead.get("/readyz").status_code == 503
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


@pytest.mark.parametrize("option", ["largest_component", "exclusive"])
def test_post_processing_options_reach_the_job_payload(client: TestClient, small_nifti: Volume, redis_url: str,
                                                       option: str) -> None:
    connection = redis.Redis.from_url(redis_url)

    def payload(**params: object) -> dict:
        job_id = _submit(client, small_nifti, targets="liver,spleen", **params)["job_id"]
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer).kwargs["payload"]

    assert payload(**{option: "false"})[option] is False
    assert payload(**{option: "true"})[option] is True
    assert payload().get(option) is None  # the bundle's default applies
    bad = client.post("/segment", params={"targets": "liver", option: "maybe"}, content=small_nifti.path.read_bytes())
    assert bad.status_code == 422 and option in bad.text
