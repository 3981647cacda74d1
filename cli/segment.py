"""`latentseg segment INPUT --targets liver,pancreas --out DIR`: the whole pipeline on one volume."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment a CT volume (NIfTI) and write mean and variance masks per target",
        description="Segment a CT volume: for each target, write {target}_mean.nii.gz (probability), "
        "{target}_variance.nii.gz (ensemble variance), plus labels.nii.gz and labels.json.",
    )
    p.add_argument("input", type=Path, help="CT volume (.nii or .nii.gz)")
    p.add_argument("--targets", required=True, help="comma-separated target names or synonyms, e.g. liver,pancreas")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--ensemble", type=int, default=None, help="ensemble members per target (default: the bundle's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps, 1-1000 (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle folder (default: $LATENTSEG_BUNDLE or the demo bundle)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="run the networks in torch (default) or ONNX Runtime (needs `latentseg export-onnx` first)")
    p.add_argument("--onnx-dir", type=Path, default=None, help="ONNX export folder (default: BUNDLE/onnx)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for torch and ONNX Runtime (default: torch's, the physical cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from cli.main import CliError
    from model.errors import BundleError, InputError
    from model.onnx_backend import load_backend
    from model.pipeline import SegmentationOptions, resolve_targets, segment_file
    from model.vocabulary import UnknownTargetError

    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.backend == "onnx" and args.device is not None:
        raise CliError("--device applies to the torch backend; onnx uses CUDA when onnxruntime-gpu finds it, else CPU")
    try:
        bundle = load_backend(args.bundle, args.backend, device=args.device, onnx_dir=args.onnx_dir,
                              threads=args.threads)
        resolve_targets(bundle, args.targets)  # fail fast, before reading the volume
        defaults = bundle.config.sampling
        options = SegmentationOptions(
            ensemble=args.ensemble if args.ensemble is not None else defaults.ensemble,
            steps=args.steps if args.steps is not None else defaults.steps,
            seed=args.seed,
        )
        with tqdm(total=100, desc="segment", unit="%", disable=args.quiet, leave=False) as bar:

            def progress(fraction: float) -> None:
                bar.update(round(100 * fraction) - bar.n)

            written = segment_file(bundle, args.input, args.out, args.targets, progress=progress, options=options)
    except (UnknownTargetError, InputError, BundleError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    except ImportError as exc:
        raise CliError(f"the onnx backend needs the onnx extra (pip install 'latentseg[onnx]'): {exc}") from exc
    for path in written:
        print(path)
    return 0
