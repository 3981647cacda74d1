"""worker.reporting against a real redis-server that is down when a job starts."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import find_free_port
from tests.reliability.conftest import PrivateRedis
from worker.reporting import Heartbeat


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_the_first_beat_waits_for_a_redis_that_is_restarting(tmp_path: Path) -> None:
    server = PrivateRedis(port=find_free_port(), directory=tmp_path / "redis")
    connection = redis.Redis(port=server.port, socket_connect_timeout=0.5)
    heartbeat = Heartbeat(lambda: connection.set("alive", "1", px=5000), interval_s=60.0)
    # Redis comes back 5 s after the job was popped: longer than redis-py's own connection retries.
    restart = threading.Timer(5.0, server.start)
    restart.start()
    try:
        began = time.monotonic()
        heartbeat.start()  # must not raise: the job waits for Redis instead of failing
        assert time.monotonic() - began >= 4.9
        assert connection.get("alive") == b"1"
    finally:
        heartbeat.stop()
        restart.join()
        server.kill()

