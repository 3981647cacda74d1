"""``latentseg worker``: an RQ worker that keeps the bundle warm (see worker/main.py for the design)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.runtime_options import LOG_FORMAT, RUNTIME_FIELDS, add_bundle_arguments, settings_overrides

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "worker",
        help="run an RQ worker for the API's queue",
        description=(
            "Load the bundle once and run segmentation jobs from the Redis queue, one at a time, "
            "in this process (non-forking). Settings come from REDIS_URL and LATENTSEG_* "
            "environment variables; flags override them. Run more processes (or hosts sharing "
            "Redis and the storage directory) to scale out."
        ),
    )
    parser.add_argument("--redis-url", help="Redis URL (default REDIS_URL)")
    parser.add_argument("--queue", help="queue name, the same as the API's (default latentseg)")
    parser.add_argument("--storage-dir", type=Path, help="storage shared with the API")
    add_bundle_arguments(parser)
    parser.add_argument("--name", help="worker name (default: host, pid and a random suffix)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    parser.add_argument(
        "--check", action="store_true", help="health check: exit 0 if a worker of this host is registered, else 1"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from pydantic import ValidationError

    from cli.main import CliError
    from worker.settings import WorkerSettings

    overrides = settings_overrides(args, (*RUNTIME_FIELDS, "name"))
    try:
        settings = WorkerSettings(**overrides)
    except ValidationError as exc:
        raise CliError(f"invalid settings: {exc}") from exc
    if not settings.redis_url:
        raise CliError("a worker needs Redis: set REDIS_URL or pass --redis-url")

    from worker.main import check_worker, run_worker

    if args.check:
        healthy, message = check_worker(settings)
        print(message, file=sys.stdout if healthy else sys.stderr)
        return 0 if healthy else 1
    if settings.bundle is not None and not settings.bundle.exists():
        raise CliError(f"bundle not found: {settings.bundle}")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    from redis.exceptions import ConnectionError as RedisConnectionError

    from model.errors import BundleError

    try:
        run_worker(settings, burst=args.burst, max_jobs=args.max_jobs)
    except RedisConnectionError as exc:
        raise CliError(f"cannot reach Redis at {settings.redis_url}: {exc}") from exc
    except BundleError as exc:
        raise CliError(f"cannot load the bundle: {exc}") from exc
    # The worker has withdrawn itself from Redis and recorded its job; tearing down an interpreter
    # with torch and MONAI loaded takes another ~2 s (2-core machine), which a supervisor waiting
    # on SIGTERM would count. Flush what is buffered and end the process now.
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
