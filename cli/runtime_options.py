"""What ``latentseg serve`` and ``latentseg worker`` share: the bundle flags, the settings overrides, the log format.

Not a sub-command (it has no ``add_parser``); both commands build their settings the same way:
a flag given on the command line overrides the LATENTSEG_* / REDIS_URL environment, a flag left
out leaves the environment (or the settings default) in charge.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LOG_FORMAT", "RUNTIME_FIELDS", "add_bundle_arguments", "settings_overrides"]

# Settings fields both service.settings.ServiceSettings and worker.settings.WorkerSettings have a flag for.
RUNTIME_FIELDS: tuple[str, ...] = ("redis_url", "queue", "storage_dir", "bundle", "device", "backend", "onnx_dir")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_bundle_arguments(parser: argparse.ArgumentParser, mode: str = "") -> None:
    """``--bundle``, ``--device``, ``--backend`` and ``--onnx-dir``; ``mode`` starts each help ("embedded mode: ")."""
    parser.add_argument("--bundle", type=Path, help=f"{mode}model bundle directory (default: the demo bundle)")
    parser.add_argument("--device", help=f"{mode}torch device (default: cuda if available, else cpu)")
    parser.add_argument("--backend", choices=("torch", "onnx"),
                        help=f"{mode}inference backend (default torch; onnx needs `latentseg export-onnx` first)")
    parser.add_argument("--onnx-dir", type=Path, help=f"{mode}ONNX export folder (default: <bundle>/onnx)")


def settings_overrides(args: argparse.Namespace, fields: Sequence[str]) -> dict[str, Any]:
    """The flags among ``fields`` given on the command line (not None), keyed by settings field name."""
    return {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
