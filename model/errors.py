"""The error family: every exception class of latentseg is a :class:`UserError` or a :class:`ServerFault`.

:class:`UserError`
    What the caller sent, and can fix: an unreadable volume, an unknown target, a bad config file,
    an upload over a limit, too many jobs at once. The API answers it with its ``status`` (4xx)
    and its message; a worker fails the job with ``invalid input: <message>``; the CLI prints it.
:class:`ServerFault`
    Our side: the deployment (bundle, packages, storage, PACS link), a broken contract between the
    API and its workers, a worker shut down mid-job. The API answers ``status`` (5xx) without the
    details, which go to the log.

Each class says how the API answers it, so the API maps them in one place
(:mod:`service.api_surface`): ``status``, fixed ``headers``, ``retry_later`` (adds the server's
``Retry-After``) and :meth:`LatentsegError.detail` (the body's ``detail``: the message, or an
object whose ``message`` is the message, for errors that carry names a client can act on).

The bases add no built-in exception type: a class that was a ``ValueError`` or ``RuntimeError``
before the family existed names it beside its base (``class InputError(UserError, ValueError)``),
so every ``except ValueError`` catches what it caught before, and nothing more.

Not in the family, on purpose: ``worker.contracts.JobInterrupted`` (a ``BaseException`` that no
``except Exception`` may swallow), ``worker.runtime.WorkerStopping`` (a signal's control flow) and
``service.client.ApiError`` (the client's copy of an answer of the server, either side).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

__all__ = ["BundleError", "InputError", "LatentsegError", "ServerFault", "UserError"]


class LatentsegError(Exception):
    """Root of the family; derive from :class:`UserError` or :class:`ServerFault`, never from this."""

    status: ClassVar[int] = 500
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({})
    retry_later: ClassVar[bool] = False  # the API adds Retry-After (its settings' retry_after_s)
    detail_fields: ClassVar[tuple[str, ...]] = ()  # attributes the API's detail object carries

    def detail(self) -> str | dict[str, Any]:
        """The API answer's ``detail``: the message, or (with ``detail_fields``) an object whose
        ``message`` is the message, beside those attributes."""
        if not self.detail_fields:
            return str(self)
        fields = {name: getattr(self, name) for name in self.detail_fields}
        return {"message": str(self), **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


class UserError(LatentsegError):
    """The caller's input is refused, and the message says why (HTTP 4xx: ``status``, 422 unless set)."""

    status: ClassVar[int] = 422


class ServerFault(LatentsegError):
    """Our side failed (HTTP 5xx: ``status``, 500 unless set); the API's answer keeps the details to the log."""

    status: ClassVar[int] = 500


class InputError(UserError, ValueError):
    """The input volume cannot be segmented (unreadable, not 3-D, empty, ...)."""


class BundleError(ServerFault, ValueError):
    """A bundle is missing, incomplete, or does not match this code (the deployment's to fix)."""
