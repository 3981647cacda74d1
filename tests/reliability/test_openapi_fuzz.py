"""Property-based run over the OpenAPI schema (schemathesis) against a real `latentseg serve`:
no generated request may produce a 5xx. Bounded and derandomised, so it is quick and repeatable
in CI; raise LATENTSEG_SCHEMATHESIS_EXAMPLES locally for a longer run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LATENTSEG, Process, clean_env, find_free_port, purge_namespace, wait_until
from tests.reliability.conftest import _spawn

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = int(os.environ.get("LATENTSEG_SCHEMATHESIS_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def api_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    root: Path = tmp_path_factory.mktemp("openapi")
    queue = f"lsfuzz-{uuid.uuid4().hex[:10]}"
    port = find_free_port()
    env = clean_env(
        REDIS_URL=redis_url, LATENTSEG_QUEUE=queue, LATENTSEG_STORAGE_DIR=str(root / "storage"),
        LATENTSEG_MAX_UPLOAD_BYTES="100000", LATENTSEG_MAX_DECOMPRESSED_BYTES="1000000",
    )
    cmd = [LATENTSEG, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = Process(_spawn(cmd, env, root / "serve.log"), root / "serve.log", url=f"http://127.0.0.1:{port}")

    def up() -> bool:
        try:
            return httpx.get(f"{process.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, 60, "server up", process)
    yield process
    process.stop()
    purge_namespace(redis_url, queue)


def test_no_request_gets_a_server_error(api_server: Process) -> None:
    """Every operation of the schema, ``EXAMPLES`` generated requests each (schemathesis's pytest
    plugin does not load under this pytest, so the strategies are driven with hypothesis here)."""
    schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/segment", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/results/{name}"}
    # /readyz answers 503 by design while no worker is live (a readiness probe); checked apart.
    ready = httpx.get(f"{api_server.url}/readyz")
    assert ready.status_code == 503 and ready.json()["problems"]
    for operation in (op for op in operations if op.path != "/readyz"):

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate])
        def no_server_error(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        no_server_error()
    assert "Traceback" not in api_server.log()
