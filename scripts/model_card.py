"""Regenerate the phantom-lineage card (docs/model_card/phantom_demo_v0.6.md; MODEL_CARD.md is scripts/real_model_card.py's).

    .venv/bin/python scripts/model_card.py                      # held-out phantoms + msd-spleen8
    .venv/bin/python scripts/model_card.py --ablation --ablation-steps 600 --ablation-minutes 6
    .venv/bin/python scripts/model_card.py --reuse              # re-render from the last reports

Evaluations go to ``runs/model_card/`` (``heldout/evaluation.json``, ``spleen8/evaluation.json``,
``ablation/ablation.json``); the card is rendered from those files, so ``--reuse`` re-renders
without recomputing. Held-out phantoms are new seeds (default 9000) never used in training.
The work is in training/cards/phantom_card_runs.py (evaluations) and training/cards/phantom_card.py (sections).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLEEN8 = REPO.parent / "shared" / "data" / "msd-spleen8"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "model" / "bundles" / "demo")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "demo" / "stem",
                        help="the demo's (last) training run")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "model_card")
    parser.add_argument("--card", type=Path, default=REPO / "docs" / "model_card" / "phantom_demo_v0.6.md",
                        help="where the phantom-lineage card goes (MODEL_CARD.md is the real-CT card: scripts/real_model_card.py)")
    parser.add_argument("--cases", type=int, default=6, help="held-out phantom cases")
    parser.add_argument("--seed", type=int, default=9000, help="held-out phantom seed (never used in training)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the bundle's)")
    parser.add_argument("--ensemble", type=int, default=None, help="ensemble members (default: the bundle's)")
    parser.add_argument("--targets", default=None, help="comma-separated subset (default: all annotated)")
    parser.add_argument("--spleen8", type=Path, default=SPLEEN8)
    parser.add_argument("--reuse", action="store_true", help="re-render from existing reports in --work")
    parser.add_argument("--ablation", action="store_true", help="also run the Table-2 ablation")
    parser.add_argument("--ablation-steps", type=int, default=600)
    parser.add_argument("--ablation-minutes", type=float, default=None)
    parser.add_argument("--ablation-cases", type=int, default=2)
    parser.add_argument("--ablation-ensemble", type=int, default=3)
    parser.add_argument("--ablation-note", default=None, help="a sentence added under the ablation table")
    parser.add_argument("--discussion", type=Path, default=None,
                        help="markdown file with the analysis of the held-out numbers (kept in --work for --reuse)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.cards.phantom_card_runs import PhantomCardOptions, write_phantom_card

    options = PhantomCardOptions(
        bundle=args.bundle, run_dir=args.run_dir, work=args.work, card=args.card, spleen8=args.spleen8,
        cases=args.cases, seed=args.seed, steps=args.steps, ensemble=args.ensemble,
        targets=tuple(t.strip() for t in args.targets.split(",")) if args.targets else None,
        reuse=args.reuse, ablation=args.ablation, ablation_steps=args.ablation_steps,
        ablation_minutes=args.ablation_minutes, ablation_cases=args.ablation_cases,
        ablation_ensemble=args.ablation_ensemble, ablation_note=args.ablation_note, discussion=args.discussion,
    )
    card = write_phantom_card(options)
    sys.stdout.write(f"wrote {card}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
