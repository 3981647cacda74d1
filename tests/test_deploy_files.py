"""The deploy files, checked without a Docker engine: compose structure, Dockerfile targets, and
every command they run is a real `latentseg` sub-command with real flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _stages(dockerfile: str) -> dict[str, str]:
    """Stage name -> its text (FROM line to the next FROM)."""
    parts = re.split(r"^(?=FROM )", dockerfile, flags=re.MULTILINE)
    stages = {}
    for part in parts:
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", part)
        if match:
            stages[match.group(2)] = part
    return stages


def _seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def _assert_latentseg_command(command: list[str], expected: str) -> None:
    assert command[0] == "latentseg", command
    args = build_parser().parse_args(command[1:])  # SystemExit on an unknown sub-command or flag
    assert args.command == expected


def test_services_volumes_and_shared_storage(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    assert set(compose["volumes"]) == {"redis-data", "data"}
    for name in ("api", "worker"):
        service = services[name]
        assert "data:/data" in service["volumes"]
        assert service["environment"]["LATENTSEG_STORAGE_DIR"] == "/data"
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["api"]["environment"]["LATENTSEG_QUEUE"] == services["worker"]["environment"]["LATENTSEG_QUEUE"]


def test_redis_is_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"], name


def test_commands_are_real_latentseg_subcommands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    _assert_latentseg_command(services["api"]["command"], "serve")
    _assert_latentseg_command(services["worker"]["command"], "worker")
    _assert_latentseg_command(services["worker"]["healthcheck"]["test"][1:], "worker")


def test_worker_reserves_a_gpu_and_outlives_a_job_on_stop(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    job_timeout = int(worker["environment"]["LATENTSEG_JOB_TIMEOUT_S"])
    assert _seconds(worker["stop_grace_period"]) > job_timeout
    assert worker["stop_signal"] == "SIGTERM"


def test_dockerfile_targets_match_compose(compose: dict[str, Any], dockerfile: str) -> None:
    stages = _stages(dockerfile)
    for name in ("api", "worker"):
        assert compose["services"][name]["build"]["target"] in stages


def test_api_image_has_no_torch_and_worker_image_has_cuda(dockerfile: str) -> None:
    stages = _stages(dockerfile)
    api, worker = stages["api"], stages["worker"]
    installs = [line for line in api.splitlines() if "pip install" in line]
    assert installs and all("[service]" in line for line in installs)
    assert not any(word in line for line in installs for word in ("torch", "[worker", "[model", "onnx"))
    assert '! python -c "import torch"' in api  # the build itself proves torch is absent
    assert worker.startswith("FROM nvidia/cuda:")
    assert "[worker,onnx-gpu]" in worker


def test_dockerfile_cmds_are_real_subcommands(dockerfile: str) -> None:
    import json

    stages = _stages(dockerfile)
    for stage, expected in (("api", "serve"), ("worker", "worker")):
        cmd = re.search(r"^CMD (\[.*\])$", stages[stage], flags=re.MULTILINE)
        assert cmd, stage
        _assert_latentseg_command(json.loads(cmd.group(1)), expected)


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_deploy_docs_cover_scale_out() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert "--scale worker=" in text and "other hosts" in text
