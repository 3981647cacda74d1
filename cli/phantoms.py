"""`latentseg phantoms`: write procedural abdominal CT phantoms as an MSD-style NIfTI dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "phantoms",
        help="write procedural abdominal CT phantoms (MSD layout, NIfTI)",
        description="Write N procedural abdominal CT phantoms with exact labels as an MSD-style dataset "
        "(dataset.json, imagesTr/, labelsTr/). Same --seed, same cases.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--cases", type=int, required=True, help="number of cases to write (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (>= 0; default 0)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("I", "J", "K"), help="voxels per axis (default random)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="voxel size in mm per axis (default random)")
    parser.add_argument("--orientation", help="nibabel axcodes such as RAS, LPS, LAS (default random)")
    parser.add_argument("--oblique-degrees", type=float, default=0.0,
                        help="max random in-plane rotation about the S axis (default 0)")
    parser.add_argument("--noise-hu", type=float, default=12.0, help="Gaussian noise SD in HU (default 12)")
    parser.add_argument("--noncontrast-prob", type=float, default=0.0,
                        help="share of cases rendered without contrast enhancement (kidneys ~30 HU; default 0)")
    parser.add_argument("--from-labels", type=Path, default=None, metavar="DATASET",
                        help="build phantoms from the real label maps of this nnU-Net v2 folder instead (warped anatomy, "
                        "re-coloured structures, varied contrast phase, noise and resolution); --cases is then per source case")
    parser.add_argument("--exclude-case", action="append", default=[], metavar="CASE",
                        help="with --from-labels: never build from this case (e.g. a validation patient); repeatable")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from cli.main import CliError
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    if args.cases < 1:
        raise CliError(f"--cases must be >= 1, got {args.cases}")
    if args.seed < 0:
        raise CliError(f"--seed must be >= 0, got {args.seed}")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a folder")
    if args.from_labels is not None:
        return _from_labels(args)
    try:
        spec = PhantomSpec(
            shape=tuple(args.shape) if args.shape else None,
            spacing=tuple(args.spacing) if args.spacing else None,
            orientation=args.orientation.upper() if args.orientation else None,
            oblique_degrees=args.oblique_degrees,
            noise_hu=args.noise_hu,
            noncontrast_prob=args.noncontrast_prob,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None

    def report(index: int, image_path: Path) -> None:
        print(f"case {index + 1}/{args.cases}: {image_path}", flush=True)

    out = write_phantom_dataset(args.out, args.cases, args.seed, spec, on_case=report)
    print(f"wrote {args.cases} case(s) and {out / 'dataset.json'}")
    return 0


def _from_labels(args: argparse.Namespace) -> int:
    from cli.main import CliError
    from training.synthetic.labelmap_phantoms import write_labelmap_phantoms

    if not (args.from_labels / "dataset.json").is_file() or not (args.from_labels / "labelsTr").is_dir():
        raise CliError(f"--from-labels {args.from_labels}: not an nnU-Net v2 folder (dataset.json, imagesTr/, labelsTr/)")

    def report(index: int, image_path: Path) -> None:
        print(f"case {index}: {image_path}", flush=True)

    try:
        out = write_labelmap_phantoms(args.from_labels, args.out, args.cases, args.seed, exclude=args.exclude_case,
                                      on_case=report)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {out / 'dataset.json'}")
    return 0
