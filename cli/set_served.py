"""`latentseg set-served BUNDLE --reports R.json ...`: mark which targets a bundle serves from left-out evaluations."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "set-served",
        help="record left-out-patient Dice per target in a bundle; targets under --min-dice are not served",
        description="Reads `latentseg evaluate` reports of fold bundles, each scored on the patient it was trained "
        "without, and writes the bundle's validation section: per target the left-out Dice and whether it is served.",
    )
    p.add_argument("bundle", type=Path, help="the bundle to mark (usually the one trained on every case)")
    p.add_argument("--reports", type=Path, nargs="+", required=True, help="evaluation.json of each left-out fold")
    p.add_argument("--min-dice", type=float, default=0.5, help="serve a target only at or above this left-out Dice")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.main import CliError
    from model.bundle.manifest import read_manifest
    from model.errors import BundleError
    from training.evaluation.evaluate import read_report
    from training.evaluation.served import validation_section, write_validation

    if not 0.0 <= args.min_dice <= 1.0:
        raise CliError(f"--min-dice must be within [0, 1], got {args.min_dice}")
    for path in args.reports:
        if not path.is_file():
            raise CliError(f"{path}: no such evaluation report")
    try:
        manifest = read_manifest(args.bundle)
        reports = [read_report(p) for p in args.reports]
        section = validation_section(reports, manifest.trained_targets, min_dice=args.min_dice)
        write_validation(args.bundle, section)
    except (BundleError, KeyError, TypeError, ValueError) as exc:
        raise CliError(f"cannot mark {args.bundle}: {' '.join(str(exc).split())}") from exc
    for name, mark in section["targets"].items():
        dice = "-" if mark["dice"] is None else f"{mark['dice']:.3f}"
        print(f"{name:28s} left-out Dice {dice:>6s}  {'served' if mark['served'] else 'NOT served'}")
    return 0
