"""Choose sampling defaults on *validation* data: Dice per (sampler, steps, ensemble) setting.

Run it on labelled cases that are neither training nor the held-out test set (the model card
uses phantoms of a seed of their own, and each real fold's left-out patient: ``--cases``), then write the winner into the bundle's config::

    python -m training.evaluation.sampling_sweep --bundle model/bundles/demo --data runs/validation/phantoms-5000 \\
        --settings ddpm:5:5,ddpm:10:5,ddim:10:5 --out runs/validation/sweep

Each setting is ``sampler:steps:ensemble``, optionally followed by ``:lcc`` (largest connected
component post-processing on) or ``:raw`` (off), and ``:excl`` (one-piece targets made exclusive,
:func:`model.inference.pipeline.resolve_overlaps`) or ``:overlap`` (not); without them, the
bundle's defaults. ``--targets-per-pass`` sets how many targets share one pipeline call (an
exclusive setting always puts them all in one; give the others the same number to compare them
on the same random draws). Prints a markdown table (one row per setting, mean
Dice per target, their mean, and seconds) and writes it with a JSON copy to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    sampler: str
    steps: int
    ensemble: int
    largest_component: bool | None = None
    exclusive: bool | None = None

    @property
    def label(self) -> str:
        post = {None: "", True: ", largest component", False: ", no post-processing"}[self.largest_component]
        post += {None: "", True: ", exclusive", False: ", overlapping"}[self.exclusive]
        return f"{self.sampler}, {self.steps} steps, ensemble {self.ensemble}{post}"


@dataclass(frozen=True)
class SweepRow:
    setting: Setting
    dice: dict[str, float | None]
    mean_dice: float | None
    seconds: float
    cases: tuple[str, ...] = ()  # the cases scored


_FLAGS: dict[str, tuple[str, bool]] = {
    "lcc": ("largest_component", True), "raw": ("largest_component", False),
    "excl": ("exclusive", True), "overlap": ("exclusive", False),
}


def parse_settings(text: str) -> list[Setting]:
    """``"ddpm:10:5,ddim:20:3"`` -> settings; a clear ValueError for anything else."""
    settings = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        fields = item.split(":")
        if len(fields) < 3 or fields[0] not in ("ddpm", "ddim"):
            raise ValueError(f"setting {item!r}: expected sampler:steps:ensemble[:lcc|:raw][:excl|:overlap] with sampler "
                             "ddpm or ddim")
        flags: dict[str, bool] = {}
        for flag in fields[3:]:
            key, value = _FLAGS.get(flag, (None, False))
            if key is None:
                raise ValueError(f"setting {item!r}: {flag!r} is none of lcc, raw, excl, overlap")
            if key in flags:
                raise ValueError(f"setting {item!r}: {flag!r} repeats a choice already made")
            flags[key] = value
        try:
            steps, ensemble = int(fields[1]), int(fields[2])
        except ValueError:
            raise ValueError(f"setting {item!r}: steps and ensemble must be integers") from None
        settings.append(Setting(fields[0], steps, ensemble, flags.get("largest_component"), flags.get("exclusive")))
    if not settings:
        raise ValueError("no settings given")
    return settings


def sweep(bundle: object, data: Path, settings: Sequence[Setting], targets: Sequence[str] | None = None,
          max_cases: int | None = None, seed: int = 0, cases: Sequence[str] | None = None,
          targets_per_pass: int = 4) -> list[SweepRow]:
    from training.evaluation.evaluate import evaluate_dataset

    rows = []
    for setting in settings:
        report = evaluate_dataset(
            bundle, data, steps=setting.steps, ensemble=setting.ensemble, sampler=setting.sampler,  # type: ignore[arg-type]
            largest_component=setting.largest_component, exclusive=setting.exclusive, seed=seed, targets=targets,
            max_cases=max_cases, cases=cases, targets_per_pass=targets_per_pass,
        )
        dice = {s.target: s.dice_mean for s in report.summary}
        known = [d for d in dice.values() if d is not None]
        rows.append(SweepRow(setting, dice, sum(known) / len(known) if known else None, report.seconds,
                            tuple(report.cases)))
        log.info("%s: mean Dice %s in %.0f s", setting.label, rows[-1].mean_dice, report.seconds)
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_table(rows: Sequence[SweepRow]) -> str:
    targets = list(rows[0].dice) if rows else []
    lines = ["| setting | " + " | ".join(targets) + " | mean | seconds |", "|---|" + "---:|" * (len(targets) + 2)]
    for row in rows:
        cells = " | ".join(_fmt(row.dice[t]) for t in targets)
        lines.append(f"| {row.setting.label} | {cells} | {_fmt(row.mean_dice)} | {row.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.sampling_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the demo bundle)")
    parser.add_argument("--data", type=Path, required=True, help="labelled validation dataset folder")
    parser.add_argument("--settings", default="ddpm:5:5,ddpm:10:5,ddim:5:5,ddim:10:5", help="sampler:steps:ensemble,...")
    parser.add_argument("--targets", default=None, help="comma-separated targets (default: all annotated and trained)")
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                        help="only these cases (label file name without extension), e.g. a fold's left-out patient")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets-per-pass", type=int, default=4,
                        help="targets per pipeline call (exclusive settings: all of them)")
    parser.add_argument("--out", type=Path, default=None, help="folder for sweep.json and sweep.md")
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.settings)
    except ValueError as exc:
        parser.error(str(exc))
    if args.targets_per_pass < 1:
        parser.error(f"--targets-per-pass must be >= 1, got {args.targets_per_pass}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from model.bundle.loaded import load_bundle

    bundle = load_bundle(args.bundle)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    cases = [c.strip() for item in args.cases for c in item.split(",") if c.strip()] if args.cases else None
    from training.data import DatasetFormatError

    try:
        rows = sweep(bundle, args.data, settings, targets, args.max_cases, args.seed, cases, args.targets_per_pass)
    except DatasetFormatError as exc:  # an unknown --cases name, a folder that is not a dataset
        parser.error(str(exc))
    table = markdown_table(rows)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.json").write_text(json.dumps(
            {"bundle": str(bundle.path), "data": str(args.data), "cases": cases, "seed": args.seed, "rows": [asdict(r) for r in rows]},
            indent=2) + "\n")
        (args.out / "sweep.md").write_text(table + "\n")
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
