"""`latentseg evaluate --bundle B --data DIR`: per-target Dice, HD95, variance AUROC, ECE and Brier on a labelled dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a bundle on a labelled dataset folder (Dice, HD95, variance AUROC, ECE, Brier)",
        description="Run the segmentation pipeline on every case of a dataset folder (MSD, nnU-Net v2 or plain) and "
        "score each target the data annotates and the bundle knows: Dice and HD95 (mm) of mean > 0.5, and the AUROC "
        "of the ensemble variance for misclassified voxels, the calibration of the mean probability (ECE over 15 bins, "
        "Brier score) and the ensemble-only review scores of statistics.json per case. Writes evaluation.json, "
        "evaluation.md and reliability.png.",
    )
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: $LATENTSEG_BUNDLE or the demo bundle)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder with labels")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the bundle's)")
    p.add_argument("--ensemble", type=int, default=None, help="ensemble members (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="sampler (default: the bundle's)")
    p.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None,
                   help="one-piece organs compete for each voxel, all targets scored in one pass (default: the bundle's)")
    p.add_argument("--targets", nargs="+", default=None, help="only these targets (names or synonyms; comma or space separated)")
    p.add_argument("--max-cases", type=int, default=None, help="only the first N cases")
    p.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                   help="only these cases (label file name without extension), e.g. a left-out patient")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: ./evaluation)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from cli.main import CliError
    from model.bundle.loaded import load_bundle
    from model.errors import BundleError, InputError
    from training.data import DatasetFormatError
    from training.evaluation.evaluate import evaluate_dataset, markdown_table, write_report

    logging.basicConfig(level=logging.WARNING)
    targets = [t.strip() for item in args.targets for t in item.split(",") if t.strip()] if args.targets else None
    if args.max_cases is not None and args.max_cases < 1:
        raise CliError(f"--max-cases must be >= 1, got {args.max_cases}")

    def report_case(index: int, total: int, case: str, seconds: float) -> None:
        print(f"case {index + 1}/{total}: {case} ({seconds:.0f} s)", flush=True)

    try:
        bundle = load_bundle(args.bundle, device=args.device)
        report = evaluate_dataset(
            bundle, args.data, steps=args.steps, ensemble=args.ensemble, seed=args.seed, sampler=args.sampler, targets=targets,
            exclusive=args.exclusive,
            max_cases=args.max_cases, cases=[c for item in args.cases or [] for c in item.split(",") if c] or None,
            on_case=report_case,
        )
    except (BundleError, InputError, DatasetFormatError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    json_path, md_path = write_report(report, args.out or Path("evaluation"))
    print(markdown_table(report.summary))
    print(f"wrote {json_path} and {md_path}")
    return 0
