"""Slow and greedy clients: deadlines on reading a request, and a cap on a key's uploads in flight.

Headers (:func:`header_deadline_protocol`)
    uvicorn's h11 protocol has a keep-alive timeout (an idle connection between requests) but no
    deadline on the headers of a request, so a client that sends them a byte at a time (slowloris)
    held its connection forever. The protocol class given to uvicorn closes a connection whose
    request headers are not complete ``header_timeout_s`` after its first byte (or after the
    connection opened), answering ``408`` in the API's JSON error shape first.

Bodies (:func:`deadline_receive`)
    ``POST /segment`` reads its body through a wrapper that fails with :class:`UploadStalled` when
    no bytes arrive for ``body_idle_timeout_s``, or when the whole body has taken longer than
    ``upload_deadline_s`` (a client trickling a byte just often enough); the route answers ``408``
    and closes the connection.

Uploads in flight (:class:`UploadsInFlight`)
    Each key may have at most ``max_uploads_in_flight_per_key`` ``POST /segment`` requests being
    received or checked at once; one more is answered ``429`` (JSON, ``Retry-After``) before its
    body is read. The count is per API process: behind N replicas a key may have N times as many.

:func:`uvicorn_options` collects the settings ``latentseg serve`` passes to ``uvicorn.run``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from model.errors import UserError

if TYPE_CHECKING:
    from service.settings import ServiceSettings

__all__ = [
    "UploadStalled",
    "UploadsInFlight",
    "deadline_receive",
    "header_deadline_protocol",
    "uvicorn_options",
]

log = logging.getLogger(__name__)

# Headers larger than this are refused by h11 (431); uvicorn's default, stated here on purpose.
MAX_HEADER_BYTES = 16 * 1024


def _raw_error(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail, "status": status}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\n\r\n"
    )
    return head.encode("ascii") + body


def header_deadline_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol plus a deadline on each request's headers (see the module docstring)."""
    if header_timeout_s <= 0:
        raise ValueError("header_timeout_s must be positive")
    timeout_answer = _raw_error(
        408, "Request Timeout", f"the request headers did not arrive within {header_timeout_s:g} s"
    )

    class HeaderDeadlineH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._awaiting_headers():
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if not self._awaiting_headers():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self._awaiting_headers() or self.transport.is_closing():
                return
            log.info("closed a connection whose request headers took over %g s", header_timeout_s)
            self.transport.write(timeout_answer)
            self.transport.close()

    return HeaderDeadlineH11Protocol


def uvicorn_options(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``: the header deadline protocol and keep-alive timeout."""
    return {
        "http": header_deadline_protocol(settings.header_timeout_s),
        "timeout_keep_alive": max(1, round(settings.keep_alive_timeout_s)),
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }


class UploadStalled(UserError):
    """The request body stopped arriving (idle) or took too long in all (HTTP 408)."""

    status = 408
    headers = MappingProxyType({"Connection": "close"})  # answer, then close the connection


def deadline_receive(receive: Receive, idle_s: float, total_s: float) -> Receive:
    """Wrap an ASGI ``receive``: :class:`UploadStalled` after ``idle_s`` without a message, or once
    the body has taken ``total_s`` since the first call."""
    started: float | None = None

    async def wrapped() -> Message:
        nonlocal started
        now = time.monotonic()
        if started is None:
            started = now
        left = total_s - (now - started)
        if left <= 0:
            raise UploadStalled(f"the upload took longer than {total_s:g} s; send it over a faster link or in less time")
        try:
            return await asyncio.wait_for(receive(), timeout=min(idle_s, left))
        except TimeoutError:
            if time.monotonic() - started >= total_s:
                raise UploadStalled(
                    f"the upload took longer than {total_s:g} s; send it over a faster link or in less time"
                ) from None
            raise UploadStalled(f"the upload stalled: no bytes arrived for {idle_s:g} s") from None

    return wrapped


class UploadsInFlight:
    """ASGI middleware: at most ``cap`` ``POST /segment`` requests per key at once (429 beyond).

    The key's name comes from the app's keyring (``app.state.keyring``); a request without a valid
    key passes through uncounted, so the route answers it 401 as before.
    """

    def __init__(self, app: ASGIApp, cap: int, retry_after_s: int, path: str = "/segment") -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.app = app
        self.cap = cap
        self.retry_after_s = retry_after_s
        self.path = path
        self._counts: dict[str, int] = {}

    def in_flight(self, owner: str) -> int:
        return self._counts.get(owner, 0)

    def _owner(self, scope: Scope) -> str | None:
        from service.auth import OPEN_TENANT, Keyring

        keyring: Keyring | None = getattr(scope["app"].state, "keyring", None) if "app" in scope else None
        if keyring is None:
            return None
        if keyring.open:
            return OPEN_TENANT
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return keyring.identify(token.strip())
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        owner = self._owner(scope)
        if owner is None:
            await self.app(scope, receive, send)
            return
        if self._counts.get(owner, 0) >= self.cap:
            log.info("upload refused: %d uploads of one key already in flight", self.cap)
            body = json.dumps({
                "detail": f"this key already has {self.cap} uploads in flight; wait for one to finish",
                "status": 429,
            }).encode()
            await send({"type": "http.response.start", "status": 429, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(self.retry_after_s).encode()), (b"connection", b"close"),
            ]})
            await send({"type": "http.response.body", "body": body})
            return
        self._counts[owner] = self._counts.get(owner, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._counts[owner] -= 1
            if self._counts[owner] <= 0:
                del self._counts[owner]
