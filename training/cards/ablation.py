"""The paper's Table 2 on phantoms: {noise ε, mask z0 prediction} × {learnt, text embeddings}.

Every variant starts from the *same* trained stage-1 auto-encoders (their checkpoints are
copied into the variant's ``out/checkpoints/``), so only the diffusion stage trains, on the
same data, with the same seed, the same number of optimizer steps (and the same wall-time
cap, if one is given), and is then scored by ``training.evaluation.evaluate`` on the same held-out
phantoms at the same sampling settings. The table reports the steps and time each variant
really got, so an unequal budget (a wall-time cap hit early) is visible.

    python -m training.cards.ablation --base training/configs/demo.yaml --stage1 runs/demo/train/checkpoints \\
        --out runs/ablation --steps 600 --minutes 6
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from model.diffusion.process import MeanType
from training.config import TrainConfig, load_train_config

log = logging.getLogger(__name__)

MEAN_TYPES: tuple[MeanType, ...] = (MeanType.EPSILON, MeanType.START_X)
CONDITIONINGS: tuple[str, ...] = ("learnt", "text")
STAGE1_FILES = ("mask-ae.pt", "image-vae.pt")
DEFAULT_TARGETS = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas")
MEAN_LABEL = {MeanType.EPSILON: "noise ε", MeanType.START_X: "mask z0"}


@dataclass(frozen=True)
class Variant:
    mean_type: MeanType
    conditioning: str

    @property
    def name(self) -> str:
        return f"{self.mean_type.value}-{self.conditioning}"

    @property
    def label(self) -> str:
        return f"{MEAN_LABEL[self.mean_type]} prediction, {self.conditioning} embeddings"


ALL_VARIANTS: tuple[Variant, ...] = tuple(Variant(m, c) for m in MEAN_TYPES for c in CONDITIONINGS)


@dataclass(frozen=True)
class VariantResult:
    variant: str
    label: str
    steps: int
    train_seconds: float
    dice: dict[str, float | None]  # target -> mean Dice over held-out cases
    mean_dice: float | None
    report: str  # evaluation.json path


def variant_config(base: TrainConfig, variant: Variant, out: Path, *, steps: int, minutes: float | None,
                   text_embeddings: Path | None) -> TrainConfig:
    """``base`` with the variant's prediction target and conditioning, its own ``out`` and the shared budget."""
    model = base.model.model_copy(
        update={
            "diffusion": base.model.diffusion.model_copy(update={"mean_type": variant.mean_type}),
            "denoiser": base.model.denoiser.model_copy(update={"conditioning": variant.conditioning}),
        }
    )
    stage = base.diffusion.model_copy(update={"steps": steps, "max_minutes": minutes})
    return base.model_copy(
        update={
            "out": out,
            "model": model,
            "diffusion": stage,
            "bundle_name": f"ablation-{variant.name}",
            "text_embeddings": text_embeddings if variant.conditioning == "text" else base.text_embeddings,
        }
    )


def seed_stage1(stage1: Path, out: Path) -> None:
    """Copy the trained auto-encoder checkpoints into ``out/checkpoints`` (the diffusion stage reads them there)."""
    target = out / "checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    for name in STAGE1_FILES:
        source = stage1 / name
        if not source.is_file():
            raise FileNotFoundError(f"{source} missing: train the auto-encoders first (latentseg train mask-ae / image-vae)")
        shutil.copy2(source, target / name)


def ensure_heldout(path: Path, cases: int, seed: int) -> Path:
    """Held-out phantoms (new seed) at ``path``, written if missing."""
    from training.synthetic.phantoms import write_phantom_dataset

    if not (path / "dataset.json").is_file():
        write_phantom_dataset(path, cases, seed)
    return path


def markdown_table(results: Sequence[VariantResult], targets: Sequence[str]) -> str:
    head = "| variant | diffusion steps | train time | " + " | ".join(targets) + " | mean |"
    rule = "|---|---:|---:|" + "---:|" * (len(targets) + 1)
    rows = [head, rule]
    for r in results:
        cells = " | ".join("n/a" if r.dice.get(t) is None else f"{r.dice[t]:.3f}" for t in targets)
        mean = "n/a" if r.mean_dice is None else f"{r.mean_dice:.3f}"
        rows.append(f"| {r.label} | {r.steps} | {r.train_seconds / 60:.1f} min | {cells} | {mean} |")
    return "\n".join(rows)


def run_ablation(
    base: TrainConfig,
    stage1: Path,
    out: Path,
    *,
    steps: int,
    minutes: float | None,
    heldout: Path,
    eval_cases: int | None,
    eval_steps: int | None,
    eval_ensemble: int | None,
    targets: Sequence[str],
    variants: Sequence[Variant] = ALL_VARIANTS,
    text_embeddings: Path | None = None,
) -> list[VariantResult]:
    """Train the diffusion stage of each variant from the same stage-1 checkpoints and evaluate it."""
    from model.bundle.loaded import load_bundle
    from training.evaluation.evaluate import evaluate_dataset, write_report
    from training.loops import train

    out.mkdir(parents=True, exist_ok=True)
    if any(v.conditioning == "text" for v in variants) and text_embeddings is None:
        from training.text_embeddings import write_text_embeddings

        text_embeddings = out / "text_embeddings.npy"
        if not text_embeddings.is_file():
            write_text_embeddings(text_embeddings)
    results: list[VariantResult] = []
    for variant in variants:
        folder = out / variant.name
        config = variant_config(base, variant, folder, steps=steps, minutes=minutes, text_embeddings=text_embeddings)
        seed_stage1(stage1, folder)
        log.info("ablation %s: training the diffusion stage (%d steps, cap %s min)", variant.name, steps, minutes)
        started = time.time()
        stage = train(config, ("diffusion",))["diffusion"]
        train_seconds = stage.seconds or (time.time() - started)
        bundle = load_bundle(folder / "bundle", device=base.device or "cpu")
        report = evaluate_dataset(
            bundle, heldout, steps=eval_steps, ensemble=eval_ensemble, targets=targets, max_cases=eval_cases
        )
        json_path, _ = write_report(report, folder / "evaluation")
        dice = {t: (s.dice_mean if (s := report.summary_for(t)) else None) for t in targets}
        known = [d for d in dice.values() if d is not None]
        results.append(
            VariantResult(
                variant=variant.name,
                label=variant.label,
                steps=stage.steps,
                train_seconds=train_seconds,
                dice=dice,
                mean_dice=sum(known) / len(known) if known else None,
                report=str(json_path),
            )
        )
        log.info("ablation %s: %s", variant.name, dice)
        write_results(results, out, targets, describe(steps, minutes, heldout, eval_cases, eval_steps, eval_ensemble))
    return results


def describe(steps: int, minutes: float | None, heldout: Path, eval_cases: int | None, eval_steps: int | None,
             eval_ensemble: int | None) -> str:
    cap = f", wall-time cap {minutes:g} min per variant" if minutes else ""
    return (
        f"Diffusion stage only, {steps} optimizer steps per variant{cap}, same stage-1 auto-encoders, data and seed. "
        f"Dice of mean > 0.5 on held-out phantoms `{heldout}` ({eval_cases or 'all'} cases; "
        f"steps {eval_steps or 'bundle default'}, ensemble {eval_ensemble or 'bundle default'})."
    )


def write_results(results: Sequence[VariantResult], out: Path, targets: Sequence[str], description: str) -> tuple[Path, Path]:
    json_path = out / "ablation.json"
    md_path = out / "ablation.md"
    json_path.write_text(
        json.dumps({"description": description, "targets": list(targets), "results": [asdict(r) for r in results]}, indent=2)
        + "\n"
    )
    md_path.write_text(description + "\n\n" + markdown_table(results, targets) + "\n")
    return json_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.cards.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=Path("training/configs/demo.yaml"), help="training config")
    parser.add_argument("--stage1", type=Path, default=Path("runs/demo/train/checkpoints"),
                        help="folder with trained mask-ae.pt and image-vae.pt")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600, help="diffusion optimizer steps per variant")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap per variant (same for all)")
    parser.add_argument("--heldout", type=Path, default=None, help="held-out labelled data (default: phantoms, seed 9000)")
    parser.add_argument("--heldout-seed", type=int, default=9000)
    parser.add_argument("--eval-cases", type=int, default=2)
    parser.add_argument("--eval-steps", type=int, default=None)
    parser.add_argument("--eval-ensemble", type=int, default=3)
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--variants", default=",".join(v.name for v in ALL_VARIANTS))
    parser.add_argument("--text-embeddings", type=Path, default=None, help=".npy table (default: computed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = load_train_config(args.base)
    by_name = {v.name: v for v in ALL_VARIANTS}
    try:
        variants = [by_name[name.strip()] for name in args.variants.split(",") if name.strip()]
    except KeyError as exc:
        parser.error(f"unknown variant {exc}; variants are {', '.join(by_name)}")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    heldout = args.heldout or ensure_heldout(args.out / "heldout", max(args.eval_cases, 1), args.heldout_seed)
    results = run_ablation(
        base, args.stage1, args.out, steps=args.steps, minutes=args.minutes, heldout=heldout,
        eval_cases=args.eval_cases, eval_steps=args.eval_steps, eval_ensemble=args.eval_ensemble,
        targets=targets, variants=variants, text_embeddings=args.text_embeddings,
    )
    sys.stdout.write(markdown_table(results, targets) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
