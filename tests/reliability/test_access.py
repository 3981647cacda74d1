"""Access over real HTTP: API keys, tenants that cannot see each other, admission limits, dedup."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue

from service.auth import Keyring, hash_api_key
from service.settings import ServiceSettings
from tests.conftest import LATENTSEG, clean_env, find_free_port
from tests.reliability.conftest import ALICE_KEY, BOB_KEY, auth


def _server(serve, redis_url: str, queue: str, storage: Path, keys_file: Path, **extra: str):  # type: ignore[no-untyped-def]
    env = {
        "REDIS_URL": redis_url, "LATENTSEG_QUEUE": queue, "LATENTSEG_STORAGE_DIR": str(storage),
        "LATENTSEG_API_KEYS_FILE": str(keys_file), **extra,
    }
    return serve(env)


def _submit(http: httpx.Client, body: bytes, key: str, **params: object) -> httpx.Response:
    return http.post("/segment", params={"targets": "liver", **params}, content=body, headers=auth(key))


def test_keys_are_mandatory_and_each_job_belongs_to_its_key(
    serve, redis_url: str, rq_queue_name: str, keys_file: Path, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server = _server(serve, redis_url, rq_queue_name, tmp_path / "storage", keys_file)
    body = quick_volume.read_bytes()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # No key, a wrong key, a malformed header: 401 before anything is read or stored.
        assert http.post("/segment?targets=liver", content=body).status_code == 401
        assert _submit(http, body, "not-a-key").status_code == 401
        bad_scheme = http.post("/segment?targets=liver", content=body, headers={"Authorization": f"Basic {ALICE_KEY}"})
        assert bad_scheme.status_code == 401 and bad_scheme.headers["www-authenticate"] == "Bearer"
        assert not (tmp_path / "storage" / "jobs").exists() or not any((tmp_path / "storage" / "jobs").iterdir())
        # Open endpoints: health, readiness, the vocabulary.
        assert http.get("/healthz").status_code == 200 and http.get("/targets").status_code == 200

        accepted = _submit(http, body, ALICE_KEY)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        other = _submit(http, body, ALICE_KEY, seed=1).json()["job_id"]
        assert len(job_id) == 32 and int(job_id, 16) != int(other, 16) + 1 and job_id != other

        assert http.get(f"/jobs/{job_id}", headers=auth(ALICE_KEY)).status_code == 200
        assert http.get(f"/jobs/{job_id}").status_code == 401
        for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/results", f"/jobs/{job_id}/results.zip",
                     f"/jobs/{job_id}/results/labels.json"):
            response = http.get(path, headers=auth(BOB_KEY))
            assert response.status_code == 404, path
        assert http.delete(f"/jobs/{job_id}", headers=auth(BOB_KEY)).status_code == 404
        batch = http.get("/jobs", params={"ids": f"{job_id},{other}"}, headers=auth(BOB_KEY)).json()
        assert batch == {"jobs": [], "missing": [job_id, other]}
        # Bob's 404 looks exactly like a job that never existed.
        never = http.get(f"/jobs/{'e' * 32}", headers=auth(BOB_KEY))
        theirs = http.get(f"/jobs/{job_id}", headers=auth(BOB_KEY))
        assert theirs.json()["detail"].replace(job_id, "X") == never.json()["detail"].replace("e" * 32, "X")
        # Alice still has it, untouched.
        assert http.get(f"/jobs/{job_id}", headers=auth(ALICE_KEY)).json()["status"] == "queued"
    # Keys are never logged; the job id is.
    log = server.log()
    assert ALICE_KEY not in log and BOB_KEY not in log and job_id in log


def test_per_key_limit_and_global_queue_cap_answer_429_with_retry_after(
    serve, redis_url: str, rq_queue_name: str, keys_file: Path, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server = _server(
        serve, redis_url, rq_queue_name, tmp_path / "storage", keys_file,
        LATENTSEG_MAX_ACTIVE_JOBS_PER_KEY="2", LATENTSEG_MAX_QUEUED_JOBS="3", LATENTSEG_RETRY_AFTER_S="17",
    )
    body = quick_volume.read_bytes()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        first = [_submit(http, body, ALICE_KEY, seed=s) for s in range(2)]
        assert [r.status_code for r in first] == [202, 202]
        limited = _submit(http, body, ALICE_KEY, seed=2)
        assert limited.status_code == 429 and limited.headers["retry-after"] == "17"
        assert "2 queued or running jobs" in limited.json()["detail"]
        assert _submit(http, body, BOB_KEY, seed=0).status_code == 202  # another key is not limited by Alice
        full = _submit(http, body, BOB_KEY, seed=1)
        assert full.status_code == 429 and "queue is full" in full.json()["detail"]
        # Cancelling one of Alice's frees her slot and the queue's.
        canceled = http.delete(f"/jobs/{first[0].json()['job_id']}", headers=auth(ALICE_KEY))
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert _submit(http, body, ALICE_KEY, seed=3).status_code == 202
    assert Queue(rq_queue_name, connection=redis.Redis.from_url(redis_url)).count == 3


def test_duplicate_submission_by_the_same_key_is_answered_with_the_same_job(
    serve, redis_url: str, rq_queue_name: str, keys_file: Path, quick_volume: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server = _server(serve, redis_url, rq_queue_name, tmp_path / "storage", keys_file)
    body = quick_volume.read_bytes()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        first = _submit(http, body, ALICE_KEY)
        again = http.post(
            "/segment", params={"targets": "liver"}, files={"file": ("renamed.nii.gz", body)}, headers=auth(ALICE_KEY)
        )
        assert first.status_code == 202 and again.status_code == 200
        assert again.json()["job_id"] == first.json()["job_id"] and again.json()["duplicate"] is True
        # Other parameters, or another key: new work.
        assert _submit(http, body, ALICE_KEY, seed=5).json()["job_id"] != first.json()["job_id"]
        assert _submit(http, body, BOB_KEY).json()["job_id"] != first.json()["job_id"]
        # Once canceled, the same upload may be submitted again.
        http.delete(f"/jobs/{first.json()['job_id']}", headers=auth(ALICE_KEY))
        fresh = _submit(http, body, ALICE_KEY)
        assert fresh.status_code == 202 and fresh.json()["job_id"] != first.json()["job_id"]
    assert Queue(rq_queue_name, connection=redis.Redis.from_url(redis_url)).count == 3
    jobs = tmp_path / "storage" / "jobs"
    # The duplicate's bytes were not kept; the canceled job keeps only its manifest (its ending).
    assert len(list(jobs.iterdir())) == 4
    assert [p.name for p in (jobs / first.json()["job_id"]).iterdir()] == ["job.json"]


def test_keys_are_stored_hashed_and_compared_in_full() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        ServiceSettings(api_keys={"alice": ALICE_KEY})
    keyring = Keyring({"alice": hash_api_key(ALICE_KEY), "bob": hash_api_key(BOB_KEY)})
    assert keyring.identify(ALICE_KEY) == "alice" and keyring.identify(BOB_KEY) == "bob"
    for near in (ALICE_KEY[:-1], ALICE_KEY + "x", ALICE_KEY.upper(), hash_api_key(ALICE_KEY), ""):
        assert keyring.identify(near) is None


def test_open_mode_only_on_loopback_and_said_at_start_up(
    serve, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    port = find_free_port()
    refused = subprocess.run(
        [LATENTSEG, "serve", "--host", "0.0.0.0", "--port", str(port)],
        env=clean_env(LATENTSEG_STORAGE_DIR=str(tmp_path / "s")), capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 2 and "no API keys configured" in refused.stderr
    # Embedded default on localhost: open, and the log says so.
    server = serve({"LATENTSEG_STORAGE_DIR": str(tmp_path / "s"), "LATENTSEG_BUNDLE": str(tmp_path / "none")})
    assert "API is OPEN" in server.log()
    assert httpx.get(f"{server.url}/jobs/{'a' * 32}").status_code == 404
