"""Worker runtime settings from the environment (pydantic-settings); command-line flags override them.

The fields the API shares (Redis, queue, storage, bundle, memory budget, PACS, sampling caps) are
:class:`worker.shared_settings.SharedSettings`'; the ones here are the worker's own.
"""

from __future__ import annotations

from pydantic import Field

from worker.shared_settings import SharedSettings

__all__ = ["WorkerSettings"]


class WorkerSettings(SharedSettings):
    """``LATENTSEG_*`` variables (plus plain ``REDIS_URL``). Never stored in bundles."""

    name: str | None = None
    # A running job refreshes its liveness key this often; the API fails a started job whose key
    # has been gone for three intervals (its worker was killed).
    heartbeat_s: float = Field(default=10.0, gt=0)
    # After a SIGTERM, a running job gets this long to finish; then it is stopped and ends
    # failed ("stopped: ..."), as on a second SIGTERM. None = wait for it (up to the job timeout):
    # set it a little below the supervisor's kill timeout (compose stop_grace_period).
    stop_grace_s: float | None = Field(default=None, gt=0)
