"""`latentseg train {mask-ae,image-vae,diffusion,all,snapshot} --config FILE`: produce a bundle.

`snapshot` writes a bundle from the diffusion stage's latest checkpoint while a run goes on (validate mid-run)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

STAGE_CHOICES = ("mask-ae", "image-vae", "diffusion", "all", "snapshot")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the mask auto-encoder, image VAE and latent diffusion model (or all three)",
        description="Train from a YAML/TOML config. Stages resume from out/checkpoints/. Multi-GPU or multi-node: "
        "launch the same command with `torchrun --nproc_per_node N -m cli.main train ...`.",
    )
    p.add_argument("stage", metavar="STAGE", help=f"one of {', '.join(STAGE_CHOICES)}")
    p.add_argument("--config", type=Path, required=True, help="training config (.yaml/.yml/.toml)")
    p.add_argument("--out", type=Path, default=None, help="override the config's output folder")
    p.add_argument("--data", type=Path, action="append", default=None, help="override the dataset folders (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="override the diffusion stage's steps")
    p.add_argument("--max-minutes", type=float, default=None, help="override the diffusion stage's wall-time budget")
    p.add_argument(
        "--exclude-case", action="append", default=None, metavar="CASE",
        help="leave this case out of training (label file name without extension; repeatable or comma separated)",
    )
    p.add_argument(
        "--init-from", type=Path, default=None, metavar="BUNDLE",
        help="fine-tune: stages without a checkpoint start from this bundle's weights (overrides the config's init_from)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.main import CliError

    if args.stage not in STAGE_CHOICES:  # checked here, not by argparse, so the error is one line
        raise CliError(f"unknown stage {args.stage!r}; stages are {', '.join(STAGE_CHOICES)}")
    if not args.config.is_file():  # before importing torch: a typo should fail in a second
        raise CliError(f"{args.config}: no such config file")
    from training.config import ConfigError, load_train_config
    from training.data import DatasetFormatError
    from training.loops import STAGES, snapshot, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict = {}
    if args.out is not None:
        overrides["out"] = str(args.out.resolve())
    if args.data:
        overrides["data"] = [str(d.resolve()) for d in args.data]
    if args.device:
        overrides["device"] = args.device
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.steps is not None or args.max_minutes is not None:
        overrides["diffusion"] = {
            **({"steps": args.steps} if args.steps is not None else {}),
            **({"max_minutes": args.max_minutes} if args.max_minutes is not None else {}),
        }
    if args.exclude_case:
        overrides["exclude_cases"] = [c for item in args.exclude_case for c in item.split(",") if c]
    if args.init_from is not None:
        overrides["init_from"] = str(args.init_from.resolve())
    try:
        config = load_train_config(args.config, overrides)
        if args.stage == "snapshot":
            print(f"bundle: {snapshot(config)}")
            return 0
        stages = STAGES if args.stage == "all" else (args.stage,)
        results = train(config, stages)
    except (ConfigError, DatasetFormatError, FileNotFoundError, ValueError) as exc:
        raise CliError(" ".join(str(exc).split())) from exc
    for stage, result in results.items():
        terms = ", ".join(f"{k}={v:.4g}" for k, v in result.final.items())
        print(f"{stage}: {result.steps} steps in {result.seconds:.0f} s ({terms})")
    if "diffusion" in results:
        print(f"bundle: {config.out / 'bundle'}")
    return 0
