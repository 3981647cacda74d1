"""``latentseg serve``: the REST API (RQ mode with REDIS_URL, else embedded with an in-process worker)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.runtime_options import LOG_FORMAT, RUNTIME_FIELDS, add_bundle_arguments, settings_overrides

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="run the REST API (embedded worker unless REDIS_URL is set)",
        description=(
            "Run the REST API. With REDIS_URL (or --redis-url) jobs go to `latentseg worker` processes "
            "through Redis/RQ; without it the API runs jobs in an in-process worker thread with the "
            "bundled demo checkpoint (no Redis, no GPU needed). Other settings come from LATENTSEG_* "
            "environment variables; flags override them."
        ),
    )
    parser.add_argument("--host", help="bind address (default LATENTSEG_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default LATENTSEG_PORT or 8000)")
    parser.add_argument("--redis-url", help="Redis URL for RQ mode (default REDIS_URL; none = embedded)")
    parser.add_argument("--queue", help="RQ queue name, shared with the workers (default latentseg)")
    parser.add_argument("--storage-dir", type=Path, help="storage shared with the workers")
    add_bundle_arguments(parser, mode="embedded mode: ")
    parser.add_argument(
        "--api-keys-file", type=Path, help="file of 'name sha256-digest' lines; any key makes a bearer key mandatory"
    )
    parser.add_argument(
        "--allow-open", action="store_true", help="run without API keys on a non-loopback host (not recommended)"
    )
    parser.add_argument(
        "--new-key",
        metavar="NAME",
        help="print a new random API key for NAME and the line to add to the keys file, then exit",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from cli.main import CliError
    from service.auth import OpenModeRefused, hash_api_key, new_api_key
    from service.main import create_app
    from service.settings import ServiceSettings

    if args.new_key is not None:
        if not args.new_key.strip() or any(c.isspace() for c in args.new_key):
            raise CliError("--new-key NAME: the name must be one word")
        key = new_api_key()
        print(f"key (give this to the client, store it nowhere else): {key}")
        print(f"keys-file line: {args.new_key} {hash_api_key(key)}")
        return 0

    overrides = settings_overrides(args, ("host", "port", *RUNTIME_FIELDS, "api_keys_file"))
    if args.allow_open:
        overrides["allow_open"] = True
    try:
        settings = ServiceSettings(**overrides)
        settings.key_digests()
    except (ValidationError, ValueError, OSError) as exc:
        raise CliError(f"invalid settings: {' '.join(str(exc).split())}") from exc
    if args.bundle is not None and not args.bundle.exists():
        raise CliError(f"bundle not found: {args.bundle}")
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    mode = "embedded (in-process worker)" if settings.embedded else f"RQ queue {settings.queue!r}"
    logging.getLogger("latentseg.serve").info(
        "serving on http://%s:%d, %s, storage %s", settings.host, settings.port, mode, settings.storage_dir
    )
    try:
        app = create_app(settings)
    except OpenModeRefused as exc:
        raise CliError(str(exc)) from exc
    from service.slow_clients import uvicorn_options  # header deadline, keep-alive timeout

    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, **uvicorn_options(settings))
    return 0
