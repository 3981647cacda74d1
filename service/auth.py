"""API keys: bearer tokens, stored as SHA-256 digests, compared in constant time.

Keys are random tokens (``secrets.token_urlsafe(32)``), not passwords, so a plain SHA-256 digest
is the right storage: the server never holds a usable key. Each key's *name* is its tenant:
jobs belong to the name that created them, and another name gets 404 for them.

With no key configured the API is open and every caller is the tenant :data:`OPEN_TENANT`;
:func:`check_open_mode` allows that only on a loopback host (or with ``allow_open``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from model.errors import ServerFault
from service.settings import ServiceSettings, is_loopback_host

__all__ = [
    "OPEN_TENANT", "CallerDep", "Keyring", "bearer_scheme", "check_open_mode", "get_caller", "hash_api_key", "new_api_key",
]

log = logging.getLogger(__name__)

OPEN_TENANT = "open"


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is configured."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Keyring:
    """name -> digest; empty means the API is open."""

    digests: Mapping[str, str]

    @property
    def open(self) -> bool:
        return not self.digests

    def identify(self, presented: str) -> str | None:
        """The name whose digest matches ``presented``; every digest is compared (no early exit)."""
        candidate = hash_api_key(presented).encode()
        found: str | None = None
        for name, digest in self.digests.items():
            if hmac.compare_digest(candidate, digest.encode()):
                found = name
        return found


class OpenModeRefused(ServerFault, RuntimeError):
    """An open API (no keys) on a non-loopback host: the operator's set-up is refused at start."""


def check_open_mode(settings: ServiceSettings, keyring: Keyring) -> None:
    """Refuse an open API on a non-loopback host (unless ``allow_open``); warn whenever it is open."""
    if not keyring.open:
        log.info("API keys: %d configured; a bearer key is required", len(keyring.digests))
        return
    if not is_loopback_host(settings.host) and not settings.allow_open:
        raise OpenModeRefused(
            f"no API keys configured and the host {settings.host!r} is not loopback: configure "
            "LATENTSEG_API_KEYS / LATENTSEG_API_KEYS_FILE, or set LATENTSEG_ALLOW_OPEN=true to run open on purpose"
        )
    log.warning(
        "no API keys configured: the API is OPEN to anyone who can reach %s:%d (all callers share one tenant)",
        settings.host,
        settings.port,
    )


# Declares the scheme in OpenAPI (every route that needs a caller lists it); the checks are ours.
bearer_scheme = HTTPBearer(
    scheme_name="ApiKey",
    bearerFormat="opaque API key",
    description="An API key (`latentseg serve --new-key NAME`) as `Authorization: Bearer <key>`. Required when the "
    "server has keys configured; a server without keys (loopback only) ignores it.",
    auto_error=False,
)


def get_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> str:
    """The tenant of this request (a key's name), or 401."""
    keyring: Keyring = request.app.state.keyring
    if keyring.open:
        return OPEN_TENANT
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise HTTPException(401, "an API key is required: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
    name = keyring.identify(token)
    if name is None:
        raise HTTPException(401, "the API key is not valid", {"WWW-Authenticate": "Bearer"})
    return name


CallerDep = Annotated[str, Depends(get_caller)]
