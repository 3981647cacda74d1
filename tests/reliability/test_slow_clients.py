"""Slow and greedy clients against a real `latentseg serve` (RQ mode, real Redis, no worker) with
short deadlines: headers sent a byte at a time, a body that stalls, a body that trickles, many
idle connections, and more concurrent uploads per key than the cap.

Timings are not asserted as goals: each check only bounds how long the server may hold a
connection at several times the configured deadline (the measured figures are in RELIABILITY.md).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Process, clean_env, launch_server, purge_namespace
from tests.reliability.conftest import ALICE_KEY, BOB_KEY, auth, unaccepted_job_dirs

HEADER_S = 1.0
IDLE_S = 1.5
DEADLINE_S = 4.0
CAP = 2
HOLD_BOUND_S = 8.0  # a dropped connection must be gone well within this


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    from service.auth import hash_api_key

    root = tmp_path_factory.mktemp("slow-clients")
    keys = root / "api_keys"
    keys.write_text(f"alice {hash_api_key(ALICE_KEY)}\nbob {hash_api_key(BOB_KEY)}\n")
    queue = f"lsslow-{uuid.uuid4().hex[:10]}"
    env = clean_env(
        REDIS_URL=redis_url, LATENTSEG_QUEUE=queue, LATENTSEG_STORAGE_DIR=str(root / "storage"),
        LATENTSEG_API_KEYS_FILE=str(keys), LATENTSEG_HEADER_TIMEOUT_S=str(HEADER_S),
        LATENTSEG_BODY_IDLE_TIMEOUT_S=str(IDLE_S), LATENTSEG_UPLOAD_DEADLINE_S=str(DEADLINE_S),
        LATENTSEG_MAX_UPLOADS_IN_FLIGHT_PER_KEY=str(CAP), LATENTSEG_KEEP_ALIVE_TIMEOUT_S="1",
    )
    process = launch_server(env, root / "serve.log")
    process.extra["storage"] = str(root / "storage")
    yield process
    process.stop()
    purge_namespace(redis_url, queue)


def _connect(server: Process) -> socket.socket:
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=HOLD_BOUND_S)
    return sock


def _read_until_closed(sock: socket.socket, bound_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() - start < bound_s:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        raise AssertionError(f"the server still holds the connection after {bound_s} s")
    return received, time.monotonic() - start


def _json_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _upload_head(key: str, length: int) -> bytes:
    return (f"POST /segment?targets=liver HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n").encode()


def test_headers_sent_a_byte_at_a_time_are_dropped_at_the_header_deadline(server: Process) -> None:
    sock = _connect(server)
    request = _upload_head(ALICE_KEY, 10)
    start = time.monotonic()
    closed_early = False
    for byte in request[:-4]:  # never completes the headers
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed_early = True
            break
        time.sleep(0.1)
        if time.monotonic() - start > HOLD_BOUND_S:
            raise AssertionError("still sending headers after the bound: the server never dropped us")
    raw, _ = _read_until_closed(sock, HOLD_BOUND_S) if not closed_early else (b"", 0.0)
    held = time.monotonic() - start
    sock.close()
    assert held < HOLD_BOUND_S
    if raw:
        status, body = _json_body(raw)
        assert status == 408 and body["status"] == 408 and "headers" in body["detail"]


def test_many_idle_connections_are_all_dropped(server: Process) -> None:
    sockets = [_connect(server) for _ in range(40)]
    for sock in sockets[::2]:
        sock.send(b"GET /healthz HTTP/1.1\r\nHo")  # half of them start a request
    time.sleep(HEADER_S + 1.5)
    still_open = 0
    for sock in sockets:
        sock.settimeout(0.5)
        try:
            data = sock.recv(65536)
            while data:
                data = sock.recv(65536)
        except TimeoutError:
            still_open += 1
        except ConnectionResetError:
            pass
        sock.close()
    assert still_open == 0
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_body_that_stalls_gets_408_and_the_connection_is_closed(server: Process) -> None:
    sock = _connect(server)
    sock.sendall(_upload_head(ALICE_KEY, 100_000) + b"\x1f\x8b" + bytes(100))
    raw, held = _read_until_closed(sock, HOLD_BOUND_S)
    sock.close()
    status, body = _json_body(raw)
    assert status == 408 and "stalled" in body["detail"] and body["status"] == 408
    assert held < HOLD_BOUND_S
    assert unaccepted_job_dirs(Path(server.extra["storage"])) == []


def test_a_body_that_trickles_is_cut_at_the_upload_deadline(server: Process) -> None:
    sock = _connect(server)
    sock.sendall(_upload_head(ALICE_KEY, 100_000))
    start = time.monotonic()
    sock.settimeout(0.05)
    raw = b""
    while time.monotonic() - start < DEADLINE_S + HOLD_BOUND_S:
        try:
            sock.send(b"\x00" * 10)  # more often than the idle timeout: only the deadline stops it
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
        except TimeoutError:
            pass
        time.sleep(0.4)
    held = time.monotonic() - start
    sock.close()
    assert held < DEADLINE_S + HOLD_BOUND_S
    status, body = _json_body(raw)
    assert status == 408 and f"longer than {DEADLINE_S:g} s" in body["detail"]


def test_one_upload_more_than_the_cap_per_key_gets_429_and_other_keys_do_not(server: Process) -> None:
    stalled = []
    for _ in range(CAP):
        sock = _connect(server)
        sock.sendall(_upload_head(ALICE_KEY, 100_000) + bytes(10))  # in flight: the body is being read
        stalled.append(sock)
    time.sleep(0.3)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        extra = http.post("/segment", params={"targets": "liver"}, content=b"x" * 100, headers=auth(ALICE_KEY))
        other = http.post("/segment", params={"targets": "liver"}, content=b"x" * 100, headers=auth(BOB_KEY))
    assert extra.status_code == 429, extra.text
    assert extra.json() == {"detail": f"this key already has {CAP} uploads in flight; wait for one to finish",
                            "status": 429}
    assert int(extra.headers["retry-after"]) > 0
    assert other.status_code == 415, other.text  # bob is not limited by alice's uploads (his body is no volume)
    for sock in stalled:
        _read_until_closed(sock, HOLD_BOUND_S)  # the stalled uploads get their 408
        sock.close()
    with httpx.Client(base_url=server.url, timeout=30) as http:  # the slots are free again
        again = http.post("/segment", params={"targets": "liver"}, content=b"x" * 100, headers=auth(ALICE_KEY))
    assert again.status_code == 415, again.text
