"""Property-based run over the OpenAPI schema (schemathesis) against a real `latentseg serve`:
no generated request may produce a 5xx. Bounded and derandomised, so it is quick and repeatable
in CI; raise LATENTSEG_SCHEMATHESIS_EXAMPLES locally for a longer run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Process, purge_namespace
from tests.reliability.conftest import rq_api_server

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = int(os.environ.get("LATENTSEG_SCHEMATHESIS_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def api_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    queue = f"lsfuzz-{uuid.uuid4().hex[:10]}"
    process = rq_api_server(
        redis_url, tmp_path_factory.mktemp("openapi"), queue, log_level="warning",
        LATENTSEG_MAX_UPLOAD_BYTES="100000", LATENTSEG_MAX_DECOMPRESSED_BYTES="1000000",
    )
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
