"""Only what the model serves: ``GET /targets`` says it, ``POST /segment`` refuses the rest with 422
before anything is queued, in both queue modes (real ``latentseg serve`` and ``latentseg worker``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from redis import Redis
from rq import Queue

from model.bundle.manifest import demo_bundle_path, read_manifest
from service.served import _from_entries, unserved_problem
from tests.conftest import Process, Volume, wait_until

DEMO = read_manifest(demo_bundle_path())
UNSERVED = next(t for t in DEMO.trained_targets if t not in DEMO.served_targets)  # trained, below the bar
UNTRAINED = next(t for t in DEMO.vocabulary.names() if t not in DEMO.trained_targets)


def _job_dirs(storage: Path) -> list[Path]:
    jobs = storage / "jobs"
    return sorted(jobs.iterdir()) if jobs.is_dir() else []


def _check_refusals(url: str, body: bytes, storage: Path) -> None:
    for name, why in ((UNSERVED, "left-out validation Dice"), (UNTRAINED, "not trained")):
        response = httpx.post(f"{url}/segment", params={"targets": f"liver,{name}"}, content=body, timeout=30)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail["unserved"] == [name] and detail["served"] == list(DEMO.served_targets)
        assert why in detail["message"] and ", ".join(sorted(DEMO.served_targets)) in detail["message"]
    assert _job_dirs(storage) == []  # refused before the upload was stored or anything queued


def _check_targets(url: str) -> dict:
    listing = httpx.get(f"{url}/targets", timeout=30).json()
    rows = {t["name"]: t for t in listing["targets"]}
    assert listing["served_targets"] == list(DEMO.served_targets)
    for name in DEMO.vocabulary.names():
        assert rows[name]["served"] is (name in DEMO.served_targets)
    assert "left-out validation Dice" in rows[UNSERVED]["served_reason"]
    assert rows[UNTRAINED]["served_reason"] == "not trained by the deployed bundle"
    assert rows["liver"]["served_reason"] is None
    return listing


def test_embedded_mode_serves_its_own_bundle(start_server: Callable[..., Process], small_nifti: Volume,
                                             tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    server = start_server({"LATENTSEG_STORAGE_DIR": str(storage)})
    listing = _check_targets(server.url)
    assert listing["bundles"][0]["name"] == DEMO.name
    _check_refusals(server.url, small_nifti.path.read_bytes(), storage)
    accepted = httpx.post(f"{server.url}/segment", params={"targets": "liver", "ensemble": 1, "steps": 1},
                          content=small_nifti.path.read_bytes(), timeout=30)
    assert accepted.status_code == 202, accepted.text


def test_rq_mode_serves_what_live_workers_publish(
    start_server: Callable[..., Process], start_worker: Callable[..., Process], redis_url: str, rq_queue_name: str,
    small_nifti: Volume, tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    env = {"REDIS_URL": redis_url, "LATENTSEG_QUEUE": rq_queue_name, "LATENTSEG_STORAGE_DIR": str(storage),
           "LATENTSEG_REQUIRE_WORKER_BUNDLE": "1"}
    server = start_server(env)
    body = small_nifti.path.read_bytes()
    # No worker yet: the served targets are unknown, and a job is refused with a clear 503.
    listing = httpx.get(f"{server.url}/targets", timeout=30).json()
    assert listing["served_targets"] is None and "no worker has published" in listing["served_note"]
    assert all(t["served"] is None for t in listing["targets"])
    early = httpx.post(f"{server.url}/segment", params={"targets": "liver"}, content=body, timeout=30)
    assert early.status_code == 503 and "no worker has published a bundle" in early.json()["detail"]
    assert early.headers["retry-after"]
    assert _job_dirs(storage) == []

    start_worker(rq_queue_name, storage, demo_bundle_path())
    wait_until(lambda: httpx.get(f"{server.url}/targets", timeout=30).json()["served_targets"] is not None, 60,
               "the worker's bundle is published")
    _check_targets(server.url)
    _check_refusals(server.url, body, storage)
    assert Queue(rq_queue_name, connection=Redis.from_url(redis_url)).count == 0
    accepted = httpx.post(f"{server.url}/segment", params={"targets": "liver", "ensemble": 1, "steps": 1},
                          content=body, timeout=30)
    assert accepted.status_code == 202, accepted.text


def test_several_bundles_serve_only_what_every_one_serves() -> None:
    a = {"name": "a", "version": "1", "served_targets": "liver,spleen", "unserved_reasons": "{}"}
    b = {"name": "b", "version": "2", "served_targets": "liver", "unserved_reasons": '{"spleen": "Dice 0.40 (< 0.5)"}'}
    state = _from_entries([a, b])
    assert state.served == {"liver"}
    assert unserved_problem(state, ["liver"]) is None
    message = unserved_problem(state, ["spleen"])
    assert message is not None and "b 2: Dice 0.40" in message and "Served targets: liver" in message
