"""Accuracy against the number of denoising steps, on held-out phantoms (seeds ≥ 9000).

Each phantom (the demo bundle trains on seed-1000 phantoms) is segmented with ensemble 5 at
1, 2, 5, 10, 25 and 50 steps; Dice of (mean > 0.5) against the exact phantom labels, on the
input grid, with the evaluation conventions of ``training.evaluation.evaluate`` (organs include their
lesions).

    python -m benchmarks.steps_vs_dice [--cases 3] [--steps 1,2,5,10,25,50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.common import DATA_DIR, Table, benchmark_bundle, load_average, phantom_path, publish, set_threads
from model.bundle.loaded import load_bundle
from model.inference.pipeline import SegmentationOptions, segment_volume
from model.inference.preprocessing import load_nifti
from training.data import read_dataset, target_masks
from training.evaluation.evaluate import dice_score
from training.synthetic.phantoms import DATASET_NAME, PHANTOM_LABELS

FIRST_SEED = 9001  # 9000 is the standard case
SPACING = (1.5, 1.5, 3.0)  # the model works at 3 mm: a finer input only costs resampling time


def heldout_dataset(cases: int) -> Path:
    """An MSD-style folder of held-out phantoms (symlinks to the cached NIfTI files)."""
    root = DATA_DIR / f"heldout_{FIRST_SEED}_{cases}"
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for seed in range(FIRST_SEED, FIRST_SEED + cases):
        image, label = phantom_path(seed, None, SPACING)
        name = f"phantom_{seed}.nii.gz"
        for folder, source in (("imagesTr", image), ("labelsTr", label)):
            link = root / folder / name
            if not link.exists():
                link.symlink_to(source)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": DATASET_NAME, "labels": {"0": "background", **{str(v): n for v, n in PHANTOM_LABELS}},
            "numTraining": cases, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--steps", default="1,2,5,10,25,50")
    parser.add_argument("--targets", default="liver,spleen")
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--samplers", default="ddpm,ddim", help="ddpm (the bundle default) and/or ddim (eta 0)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    load_before = load_average()
    steps_list = [int(s) for s in args.steps.split(",")]
    targets = args.targets.split(",")
    samplers = args.samplers.split(",")
    bundle_path, trained = benchmark_bundle()
    bundle = load_bundle(bundle_path, device="cpu")
    source = read_dataset(heldout_dataset(args.cases), bundle.vocabulary)
    runs = [(sampler, steps) for sampler in samplers for steps in steps_list]
    dice: dict[tuple[str, int], dict[str, list[float]]] = {r: {t: [] for t in targets} for r in runs}
    seconds: dict[tuple[str, int], list[float]] = {r: [] for r in runs}
    shapes = []
    for case in source.cases:
        volume = load_nifti(case.image)
        label = np.asarray(nib.load(str(case.label)).dataobj)
        truths = target_masks(label, volume.affine, source.label_map, bundle.vocabulary)
        shapes.append(volume.shape)
        for sampler, steps in runs:
            options = SegmentationOptions(ensemble=args.ensemble, steps=steps, sampler=sampler)
            start = time.perf_counter()
            result = segment_volume(bundle, volume, targets, options)
            seconds[sampler, steps].append(time.perf_counter() - start)
            for t in targets:
                dice[sampler, steps][t].append(dice_score(result.mean[t] > 0.5, truths[t]))
    reference = steps_list[-1]
    table = Table(
        f"Steps vs Dice: {len(source.cases)} held-out phantoms (seeds {FIRST_SEED}–{FIRST_SEED + len(source.cases) - 1}), "
        f"ensemble {args.ensemble}, Dice of mean > 0.5 in points (0–100)",
        ["sampler", "steps", *targets, "mean", f"Δ vs {reference} steps", "seconds per case"],
    )
    mean_dice = {r: statistics.mean(statistics.mean(dice[r][t]) for t in targets) * 100 for r in runs}
    for sampler, s in runs:
        per_target = [f"{100 * statistics.mean(dice[sampler, s][t]):.1f}" for t in targets]
        delta = mean_dice[sampler, s] - mean_dice[sampler, reference]
        default = " (bundle default)" if sampler == bundle.config.sampling.sampler else ""
        table.rows.append([sampler + default, s, *per_target, f"**{mean_dice[sampler, s]:.1f}**", f"{delta:+.1f}",
                           f"{statistics.mean(seconds[sampler, s]):.1f}"])
    table.notes.append(f"phantoms at {'×'.join(map(str, SPACING))} mm, shapes {', '.join('×'.join(map(str, s)) for s in shapes)}; "
                       f"{threads} threads, in process (bundle loaded)")
    if not trained:
        table.notes.append("**random weights** with the demo configuration: the trained demo bundle was absent, so "
                           "these Dice values mean nothing")
    publish("steps_vs_dice", [table], {
        "dice": {f"{k[0]}:{k[1]}": v for k, v in dice.items()},
        "mean_dice_points": {f"{k[0]}:{k[1]}": v for k, v in mean_dice.items()},
        "seconds": {f"{k[0]}:{k[1]}": v for k, v in seconds.items()},
        "default_sampler": str(bundle.config.sampling.sampler), "trained": trained}, load_before)


if __name__ == "__main__":
    main()
