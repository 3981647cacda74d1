"""The `latentseg` command line: one sub-command per module in this package.

Each sub-command module exposes ``add_parser(subparsers)`` and imports anything heavy
(torch, MONAI, FastAPI) only inside the function it registers, so `latentseg --help`
stays fast and the API image can run `serve` without torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from model.errors import UserError

# Order is the order shown in --help.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "segment",
    "targets",
    "serve",
    "submit",
    "worker",
    "phantoms",
    "train",
    "evaluate",
    "set_served",
    "average",
    "text_embeddings",
    "export_onnx",
)


# Sub-commands that run the networks: MONAI is imported up front without `transformers`
# (model.monai_import), which a fresh `latentseg segment` would otherwise spend ~2 s on.
MONAI_COMMANDS = frozenset({"segment", "evaluate", "worker", "export_onnx"})


class CliError(UserError):
    """An error the user can fix; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentseg",
        description="Universal CT segmentation with guided latent diffusion (mean + variance masks).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(f"cli.{name}") is None:
            continue
        module = importlib.import_module(f"cli.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # libgomp reads OMP_WAIT_POLICY once, when torch loads it (just below, with MONAI): set here for every
    # command (segment, worker, serve's embedded worker, evaluate, train), not later, or it has no effect.
    # Spinning made a CLI run 2.6x slower under load (BENCHMARKS.md, v0.7). An explicit value is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.command in MONAI_COMMANDS:
        from model.monai_import import import_monai_lean

        import_monai_lean()
    try:
        result = args.func(args)
    except CliError as exc:
        print(f"latentseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `latentseg targets | head`
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    # Run through the package module so `python -m cli.main` and the console script share CliError.
    from cli.main import main as _main

    sys.exit(_main())
