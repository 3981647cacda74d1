"""`latentseg export-onnx --bundle B --out DIR`: the bundle's networks as ONNX graphs for `--backend onnx`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export a bundle's image encoder, denoiser and mask decoder to ONNX (for --backend onnx)",
        description="Export the bundle's three networks to ONNX with a dynamic batch, check each against "
        "torch in ONNX Runtime, and write onnx.json tying the export to the bundle's weights (a stale "
        "export is refused at load time).",
    )
    p.add_argument("--bundle", type=Path, default=None,
                   help="model bundle folder (default: $LATENTSEG_BUNDLE or the demo bundle)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder, replaced if present (default: BUNDLE/onnx, where --backend onnx looks)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs torch check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.main import CliError
    from model.errors import BundleError

    try:
        from model.bundle.onnx_backend import export_onnx

        out = export_onnx(args.bundle, args.out, opset=args.opset, verify=not args.no_verify)
    except ImportError as exc:
        raise CliError(f"ONNX export needs the onnx extra (pip install 'latentseg[onnx]'): {exc}") from exc
    except BundleError as exc:
        raise CliError(str(exc)) from exc
    print(out)
    return 0
