"""`latentseg average BUNDLE BUNDLE ... --out DIR`: a bundle whose denoiser is the mean of fine-tunes of one parent."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "average",
        help="average the denoisers of bundles fine-tuned from one parent (a model soup)",
        description="Writes a bundle whose denoiser weights are the (weighted) mean of the given bundles'. They must "
        "share config, vocabulary, trained targets, latent scale factors and auto-encoder weights (runs of one "
        "recipe from one parent, e.g. with other seeds). The result carries no served marks: score it on left-out "
        "cases and mark it with `latentseg set-served`.",
    )
    p.add_argument("bundles", type=Path, nargs="+", help="two or more bundle folders")
    p.add_argument("--out", type=Path, required=True, help="the averaged bundle's folder")
    p.add_argument("--weights", type=float, nargs="+", help="one non-negative weight per bundle (default: equal)")
    p.add_argument("--name", help="the new bundle's name (default: the first bundle's)")
    p.add_argument("--version", help="the new bundle's version (default: the first bundle's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.main import CliError
    from model.errors import BundleError
    from training.weight_average import average_bundles

    if len(args.bundles) < 2:
        raise CliError("name at least two bundles to average")
    if args.weights is not None and len(args.weights) != len(args.bundles):
        raise CliError(f"--weights: {len(args.weights)} weights for {len(args.bundles)} bundles")
    if args.out.resolve() in {b.resolve() for b in args.bundles}:
        raise CliError(f"--out {args.out} is one of the bundles being averaged")
    try:
        out = average_bundles(args.bundles, args.out, weights=args.weights, name=args.name, version=args.version)
    except (BundleError, ValueError) as exc:
        raise CliError(f"cannot average: {' '.join(str(exc).split())}") from exc
    print(f"wrote {out} (the mean of {len(args.bundles)} denoisers)")
    return 0
