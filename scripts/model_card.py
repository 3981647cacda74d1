"""Regenerate the phantom-lineage card (docs/model_card/phantom_demo_v0.6.md; MODEL_CARD.md is scripts/real_model_card.py's).

    .venv/bin/python scripts/model_card.py                      # held-out phantoms + msd-spleen8
    .venv/bin/python scripts/model_card.py --ablation --ablation-steps 600 --ablation-minutes 6
    .venv/bin/python scripts/model_card.py --reuse              # re-render from the last reports

Evaluations go to ``runs/model_card/`` (``heldout/evaluation.json``, ``spleen8/evaluation.json``,
``ablation/ablation.json``); the card is rendered from those files, so ``--reuse`` re-renders
without recomputing. Held-out phantoms are new seeds (default 9000) never used in training.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FLOORS: dict[str, float] = {"liver": 0.90, "spleen": 0.90, "kidney_right": 0.90, "kidney_left": 0.90, "pancreas": 0.75}
SPLEEN8 = REPO.parent / "shared" / "data" / "msd-spleen8"
COMMITTED_ABLATION = REPO / "docs" / "model_card" / "ablation.json"
COMMITTED_DISCUSSION = REPO / "docs" / "model_card" / "discussion.md"

log = logging.getLogger("model_card")


# --------------------------------------------------------------------------- data
def spleen8_dataset(source: Path, folder: Path) -> Path | None:
    """A plain-layout view (symlinks + labelmap.json) of the shared real case, as scripts/train_demo.sh builds it."""
    image, label = source / "spleen_8_image.nii.gz", source / "spleen_8_label.nii.gz"
    if not (image.is_file() and label.is_file()):
        return None
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for src, dst in ((image, folder / "images" / "spleen_8.nii.gz"), (label, folder / "labels" / "spleen_8.nii.gz")):
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src.resolve())
    (folder / "labelmap.json").write_text(json.dumps({"name": "msd_task09_spleen", "labels": {"1": "spleen"}}) + "\n")
    return folder


def heldout_phantoms(folder: Path, cases: int, seed: int) -> Path:
    from training.phantoms import write_phantom_dataset

    meta = folder / "dataset.json"
    if meta.is_file() and json.loads(meta.read_text()).get("numTraining") == cases:
        return folder
    return write_phantom_dataset(folder, cases, seed)


# --------------------------------------------------------------------------- provenance
def stage_seconds(bundle_meta: dict[str, Any], run_dir: Path | None) -> dict[str, float | None]:
    """Wall time per stage: provenance.stages[stage].seconds, else the last row of the run's CSV log."""
    stages = bundle_meta.get("provenance", {}).get("stages", {})
    out: dict[str, float | None] = {}
    for stage in ("mask-ae", "image-vae", "diffusion"):
        seconds = (stages.get(stage) or {}).get("seconds")
        if seconds is None and run_dir is not None and (run_dir / "logs" / f"{stage}.csv").is_file():
            with (run_dir / "logs" / f"{stage}.csv").open() as fh:
                rows = list(csv.DictReader(fh))
            seconds = float(rows[-1]["seconds"]) if rows and rows[-1].get("seconds") else None
        out[stage] = seconds
    return out


def cpu_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({model})"


def parameter_counts(bundle_dir: Path) -> dict[str, int]:
    from safetensors import safe_open

    counts: dict[str, int] = {}
    with safe_open(str(bundle_dir / "weights.safetensors"), framework="pt") as fh:
        for key in fh.keys():
            prefix = key.split(".", 1)[0]
            shape = fh.get_slice(key).get_shape()
            n = 1
            for s in shape:
                n *= int(s)
            counts[prefix] = counts.get(prefix, 0) + n
    return counts


# --------------------------------------------------------------------------- lineage
# What each demo training config does, for the card (the configs' headers give the why).
DEMO_RUN_NOTES: dict[str, str] = {
    "demo.yaml": "from scratch; the two auto-encoders side by side, one thread each (so their times overlap), "
    "then the diffusion stage.",
    "demo_finetune.yaml": "the mask AE kept as is (0 steps), the image VAE trained on (on run 1's 36 phantoms and "
    "the real case, `--data`), the denoiser fine-tuned on the new image latents with more phantoms.",
    "demo_pixels.yaml": "both auto-encoders kept (0 steps); the denoiser gains pixel conditioning "
    "(`denoiser.image_pixels`: the window itself, space-to-depth, beside the image latent; the new input weights "
    "start at zero, so training starts from the previous predictions) and trains on 320 phantoms.",
    "demo_context.yaml": "both auto-encoders and their latent scale factors kept; the denoiser gains two context "
    "slices either side of each window (`denoiser.context_slices`: ±3 and ±6 mm, space-to-depth beside the slice's "
    "pixels, zero-initialised input weights) and trains on the same 320 phantoms and the real case.",
    "demo_context_long.yaml": "the same network trained on (both auto-encoders and their latent scale factors kept): "
    "a fresh warm-up and cosine schedule from a lower peak learning rate, on the same data, with the image encoder "
    "in bf16 again.",
    "demo_stem.yaml": "both auto-encoders and their latent scale factors kept; the denoiser gains a pixel stem "
    "(`denoiser.pixel_stem`: a small full-resolution CNN over the window and its context slices, down to the latent "
    "grid; zero-initialised input weights, so training starts from the previous predictions) and trains on the same "
    "data.",
}
# The phantom sets scripts/train_demo.sh writes: folder name -> (`latentseg phantoms` arguments, a note).
DEMO_PHANTOMS: dict[str, tuple[str, str]] = {
    "phantoms": ("--cases 36 --seed 1000", ""),
    "phantoms160": ("--cases 160 --seed 1000", "the first 36 are those of `phantoms`: a case depends only on the seed "
                    "and its index"),
    "phantoms_s2000": ("--cases 160 --seed 2000", ""),
}


def demo_configs() -> dict[str, dict[str, str]]:
    """bundle version -> {file, out, note} of the demo training configs in ``training/configs``."""
    import yaml

    out: dict[str, dict[str, str]] = {}
    for name, note in DEMO_RUN_NOTES.items():
        path = REPO / "training" / "configs" / name
        if not path.is_file():
            continue
        raw = yaml.safe_load(path.read_text())
        run_dir = (path.parent / str(raw.get("out", ""))).resolve()
        shown = run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir
        data = ",".join(Path(str(d)).name for d in raw.get("data", []))
        out[str(raw.get("bundle_version"))] = {
            "file": f"training/configs/{name}", "out": str(shown), "note": note, "data": data,
        }
    return out


def lineage(bundle_meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifests of the bundles ``bundle_meta`` was fine-tuned from (provenance ``init_from``), oldest
    first; the chain stops, with a warning, at a parent whose folder is gone."""
    chain: list[dict[str, Any]] = []
    meta = bundle_meta
    while (parent := (meta.get("provenance", {}).get("init_from") or {}).get("path")) and len(chain) < 32:
        manifest = Path(parent) / "bundle.json"
        if not manifest.is_file():
            log.warning("parent bundle %s not found: it and earlier training runs are left out of the card", parent)
            break
        meta = json.loads(manifest.read_text())
        chain.append(meta)
    return chain[::-1]


def phantom_data_line(metas: Sequence[dict[str, Any]], configs: dict[str, dict[str, str]]) -> str:
    """Which phantom sets the runs' configs train on, with the commands that write them."""
    used: dict[str, list[int]] = {}
    for i, meta in enumerate(metas, 1):
        config = configs.get(meta.get("version", ""))
        for name in config["data"].split(",") if config else []:
            if name in DEMO_PHANTOMS:
                used.setdefault(name, []).append(i)
    if not used:
        return "- Phantoms: procedural abdominal CT with exact labels (`latentseg phantoms`)."
    parts = []
    for name, runs in used.items():
        arguments, note = DEMO_PHANTOMS[name]
        where = f"run{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs))}" + (f"; {note}" if note else "")
        parts.append(f"`--out runs/demo/data/{name} {arguments}` ({where})")
    return (
        "- Phantoms (`latentseg phantoms`; procedural abdominal CT with exact labels; random anatomy, spacing, "
        "orientation, noise): " + "; ".join(parts) + "."
    )


# --------------------------------------------------------------------------- rendering
def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def heldout_table(report: Any) -> str:
    rows = [
        "| target | cases | Dice mean ± sd | floor | met? | HD95 mm (n) | variance AUROC (n) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for s in report.summary:
        floor = FLOORS.get(s.target)
        if floor is None:
            verdict, floor_cell = "reported", "—"
        elif s.dice_mean is None:
            verdict, floor_cell = "not measured", f"{floor:.2f}"
        else:
            verdict, floor_cell = ("met" if s.dice_mean >= floor else "**missed**"), f"{floor:.2f}"
        dice = "n/a" if s.dice_mean is None else f"{s.dice_mean:.3f} ± {s.dice_sd:.3f}"
        hd = "n/a" if s.hd95_mean_mm is None else f"{s.hd95_mean_mm:.1f} ± {s.hd95_sd_mm:.1f}"
        rows.append(
            f"| {s.target} | {s.cases} | {dice} | {floor_cell} | {verdict} | {hd} ({s.hd95_cases}) | "
            f"{_f(s.auroc_mean)} ({s.auroc_cases}) |"
        )
    return "\n".join(rows)


def render_card(
    bundle_dir: Path,
    bundle_meta: dict[str, Any],
    seconds: dict[str, float | None],
    params: dict[str, int],
    heldout: Any | None,
    spleen: Any | None,
    spleen_in_training: bool,
    ablation: dict[str, Any] | None,
    eval_hardware: str,
    command: str,
    ceiling: list[dict[str, Any]] | None = None,
    discussion: str | None = None,
    grid_ceiling: list[dict[str, Any]] | None = None,
    earlier_runs: Sequence[tuple[dict[str, Any], dict[str, float | None]]] = (),
) -> str:
    """``earlier_runs``: the (manifest, stage seconds) of the bundles this one was fine-tuned from, oldest first."""
    from model.config import ModelConfig

    prov = bundle_meta.get("provenance", {})
    cfg = bundle_meta["config"]
    pre, samp = cfg["preprocess"], cfg["sampling"]
    stages = prov.get("stages", {})
    lines: list[str] = []
    add = lines.append
    add(f"# Model card: `{bundle_meta['name']}` {bundle_meta['version']} (the shipped demo bundle)")
    add("")
    add(f"_Generated by `{command}` from measured runs; do not edit by hand._")
    add("")
    add("## What it is")
    add(
        f"A guided latent diffusion segmenter (paper: mask auto-encoder + image VAE + conditional latent denoiser), "
        f"trained on CPU at a deliberately small size so that it ships in the repository "
        f"(`{bundle_dir.relative_to(REPO) if bundle_dir.is_relative_to(REPO) else bundle_dir}`) and runs on a laptop. "
        f"It returns, per requested target, an ensemble-mean probability mask and an ensemble-variance mask."
    )
    add("")
    add(f"- Targets it was trained for: {', '.join(f'`{t}`' for t in bundle_meta['trained_targets'])}")
    add(
        f"- Grid: {' × '.join(f'{s:g}' for s in pre['spacing'])} mm, axial {pre['patch_size'][0]}×{pre['patch_size'][1]} "
        f"windows, intensity window [{pre['intensity_min']:g}, {pre['intensity_max']:g}] HU"
    )
    add(
        f"- Networks: mask AE {params.get('mask_ae', 0) / 1e6:.2f} M, image VAE {params.get('image_vae', 0) / 1e6:.2f} M, "
        f"denoiser {params.get('denoiser', 0) / 1e6:.2f} M parameters; prediction `{cfg['diffusion']['mean_type']}`, "
        f"variance `{cfg['diffusion']['var_type']}`, loss `{cfg['diffusion']['loss_type']}`, "
        f"conditioning `{cfg['denoiser']['conditioning']}`; the denoiser sees the image through "
        + ("its latent and its pixels (`image_pixels`: the window space-to-depth"
           + (f", with {cfg['denoiser']['context_slices']} context slices either side (`context_slices`)"
              if cfg["denoiser"].get("context_slices") else "")
           + f", {ModelConfig.from_dict(cfg).image_condition_channels} channels in all)"
           + (f", and through a full-resolution pixel stem (`pixel_stem`: {list(cfg['denoiser']['pixel_stem'])} channels "
              f"down to the latent grid, computed once per window)" if cfg["denoiser"].get("pixel_stem") else "")
           if cfg["denoiser"].get("image_pixels") else "its latent only")
    )
    add(
        f"- Default sampling: {samp['steps']} {samp['sampler']} steps, ensemble {samp['ensemble']}, "
        f"window overlap {samp['overlap']}"
    )
    add("")
    add("## Intended use")
    add(
        "Demonstrating and testing the service end to end (CLI, REST API, workers) without a GPU or downloads. "
        "It is **not** a clinical model and is not validated on real patients: it has seen procedural phantoms "
        "and at most one real CT. For real use, train the paper configuration on real data "
        "(`training/configs/`, `latentseg train all`) and evaluate it with `latentseg evaluate`."
    )
    add("")
    add("## Training data")
    for path in prov.get("data", []):
        add(f"- `{Path(path).relative_to(REPO) if Path(path).is_relative_to(REPO) else path}`")
    add(f"- Datasets (sampled by dataset weight, then case): {', '.join(f'`{d}`' for d in prov.get('datasets', []))}")
    metas = [meta for meta, _ in earlier_runs] + [bundle_meta]
    configs = demo_configs()
    add(phantom_data_line(metas, configs))
    if spleen_in_training:
        add(
            "- Real: MSD Task09 `spleen_8` from `../shared/data/msd-spleen8` (CC BY-SA 4.0), spleen label only "
            "(partial labels: other targets are never trained as background on it)."
        )
    add("")
    add("## How it was trained")
    add("One command, on the machine below: `bash scripts/train_demo.sh`. It writes the phantoms, links the real case, "
        f"and trains in {len(metas)} run{'s' if len(metas) > 1 else ''}"
        + (", each starting every stage from the previous run's bundle (`init_from`):" if len(metas) > 1 else ":"))
    add("")
    for i, meta in enumerate(metas, 1):
        config = configs.get(meta.get("version", ""))
        if config is None:
            add(f"{i}. version {meta.get('version', '?')} (no demo config of that version in `training/configs/`).")
        else:
            add(f"{i}. `{config['file']}` (version {meta['version']}, `{config['out']}`): {config['note']}")
    add("")
    add("Each config's header gives the measurements behind it. The last run's bundle is copied here.")
    add("")
    runs = [(str(i), meta, secs) for i, (meta, secs) in enumerate([*earlier_runs, (bundle_meta, seconds)], 1)]
    add("| run | stage | optimizer steps | wall time | final loss terms |")
    add("|---|---|---:|---:|---|")
    total = 0.0
    for run, meta, secs in runs:
        run_stages = meta.get("provenance", {}).get("stages", {})
        for stage in ("mask-ae", "image-vae", "diffusion"):
            info = run_stages.get(stage) or {}
            final = ", ".join(f"{k} {v:.4g}" for k, v in (info.get("final") or {}).items())
            sec = secs.get(stage)
            total += sec or 0.0
            add(f"| {run} | {stage} | {info.get('steps', 'n/a')} | {'n/a' if sec is None else f'{sec / 60:.1f} min'} | {final} |")
    add("")
    add(
        f"- Total training wall time: {'n/a' if not total else f'{total / 60:.1f} min'}; device `{prov.get('device', '?')}`, "
        f"world size {prov.get('world_size', 1)}, torch {prov.get('torch', '?')}, seed {prov.get('seed', '?')}, "
        f"created {prov.get('created', '?')}."
    )
    add(f"- Evaluation hardware (this card): {eval_hardware}.")
    add("")
    add("## Held-out phantoms")
    if heldout is None:
        add("Not evaluated in this run.")
    else:
        add(
            f"{len(heldout.cases)} new phantoms (`latentseg phantoms --seed {heldout_seed_of(heldout)}`, never seen in training), "
            f"{len(heldout.summary)} targets (annotated and trained), {sampling_phrase(heldout, samp)}; "
            f"{heldout.seconds / 60:.1f} min on {heldout.device}. Floors from the issue: Dice ≥ 0.90 for liver, spleen "
            f"and each kidney, ≥ 0.75 for pancreas; tumours are reported."
        )
        add("")
        add(heldout_table(heldout))
        missed = [s.target for s in heldout.summary if s.target in FLOORS and (s.dice_mean is None or s.dice_mean < FLOORS[s.target])]
        add("")
        add(f"Floors: {'all met' if not missed else 'missed for ' + ', '.join(missed)}.")
    if ceiling:
        grid = {row["target"]: row for row in grid_ceiling or []}
        add("")
        add("### Ceilings: the grid and the mask auto-encoder")
        add(
            "Two upper bounds, measured on the same held-out cases (`training/ceiling.py`). **Grid ceiling**: the "
            "ground truth taken to the model grid as training takes it (nearest neighbour) and back to the input grid "
            "as inference returns a mean mask (linear, > 0.5), scored on the input grid: what a perfect model would "
            "score at this spacing. **AE ceiling**: the ground truth sent through the mask auto-encoder alone "
            "(`decode(encode(truth))`, slice by slice, on the model grid): the best the denoiser could reach with "
            "this auto-encoder and latent size. Sampled Dice from the table above beside them."
        )
        add("")
        add("| target | cases | grid ceiling mean (worst) | AE ceiling mean (worst) | sampled Dice | share of the AE ceiling |")
        add("|---|---:|---:|---:|---:|---:|")
        sampled = {s.target: s.dice_mean for s in heldout.summary} if heldout is not None else {}
        for row in ceiling:
            got = sampled.get(row["target"])
            share = "n/a" if got is None or not row["dice_mean"] else f"{got / row['dice_mean']:.0%}"
            g = grid.get(row["target"])
            grid_cell = "n/a" if g is None else f"{g['dice_mean']:.3f} ({g['dice_min']:.3f})"
            add(
                f"| {row['target']} | {row['cases']} | {grid_cell} | {row['dice_mean']:.3f} ({row['dice_min']:.3f}) "
                f"| {_f(got)} | {share} |"
            )
    if discussion:
        add("")
        add("### Discussion")
        add(discussion.strip())
    add("")
    add("## Real CT: MSD spleen_8")
    if spleen is None:
        add("Not evaluated (`../shared/data/msd-spleen8` absent).")
    else:
        s = spleen.summary_for("spleen")
        hd = "n/a" if s is None or s.hd95_mean_mm is None else f"{s.hd95_mean_mm:.1f} mm"
        add(
            f"Spleen Dice **{_f(s.dice_mean if s else None)}**, HD95 {hd}, variance AUROC {_f(s.auroc_mean if s else None)} "
            f"({sampling_phrase(spleen, samp)})."
        )
        if spleen_in_training:
            add("")
            add(
                "**This case was in the demo's training data** (it is the only real case available here), so this "
                "number shows that the pipeline handles real CT geometry and intensities; it is **not** a measure of "
                "generalisation to unseen patients."
            )
    add("")
    add("## Ablation (paper Table 2) on phantoms")
    if ablation is None:
        add("Not run for this card (`scripts/model_card.py --ablation` runs it).")
    else:
        add(ablation["description"])
        add("")
        add(ablation_table(ablation))
        if ablation.get("note"):
            add("")
            add(ablation["note"])
        if ablation.get("source"):
            add("")
            add(f"_{ablation['source']}_")
    add("")
    add("## Metrics")
    notes = (heldout or spleen).notes if (heldout or spleen) is not None else ()
    for note in notes:
        add(f"- {note}")
    add("")
    add("## Limitations")
    add(f"- Small CPU model at {max(pre['spacing']):g} mm: thin or small structures (tumours, vessels, gallbladder) are coarse at this "
        "resolution; Dice for small lesions is noisy and case-dependent.")
    add("- Phantoms are easier and more regular than patients; phantom Dice overstates real performance.")
    add("- One real case only, and it was used in training when present (see above).")
    context = int(cfg["denoiser"].get("context_slices") or 0)
    if context:
        add(f"- 2-D axial windows with {context} context slice{'s' if context > 1 else ''} either side "
            f"(±{context * pre['spacing'][2]:g} mm through the plane), not 3-D; no test-time augmentation.")
    else:
        add("- 2-D axial windows: no through-plane context; no test-time augmentation.")
    add("- Ensemble variance reflects sampling disagreement, not calibrated clinical uncertainty.")
    add("")
    add("## Regenerate")
    add("```")
    took = "" if not total else f" ({total / 60:.0f} min of stage wall time here)"
    add(f"bash scripts/train_demo.sh                       # the bundle{took}")
    add("python scripts/model_card.py [--ablation ...]    # these numbers and this file")
    add("```")
    return "\n".join(lines) + "\n"


def sampling_phrase(report: Any, defaults: dict[str, Any]) -> str:
    default = report.steps == defaults["steps"] and report.ensemble == defaults["ensemble"]
    return (
        f"{'the bundle defaults: ' if default else 'non-default sampling: '}steps {report.steps}, "
        f"ensemble {report.ensemble}, seed {report.seed}"
    )


def heldout_seed_of(report: Any) -> str:
    name = report.cases[0] if report.cases else ""
    parts = name.split("_")
    return parts[1] if len(parts) >= 3 else "?"


def ablation_table(ablation: dict[str, Any]) -> str:
    targets = ablation["targets"]
    rows = ["| variant | diffusion steps | train time | " + " | ".join(targets) + " | mean |",
            "|---|---:|---:|" + "---:|" * (len(targets) + 1)]
    for r in ablation["results"]:
        cells = " | ".join(_f(r["dice"].get(t)) for t in targets)
        rows.append(f"| {r['label']} | {r['steps']} | {r['train_seconds'] / 60:.1f} min | {cells} | {_f(r['mean_dice'])} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from model.bundle import load_bundle
    from training.evaluate import evaluate_dataset, read_report, write_report

    bundle_meta = json.loads((args.bundle / "bundle.json").read_text())
    targets = [t.strip() for t in args.targets.split(",")] if args.targets else None
    heldout_dir = args.work / f"heldout-phantoms-{args.seed}"
    reports: dict[str, Any] = {}
    bundle = None
    for key, data in (("heldout", "phantoms"), ("spleen8", "spleen8")):
        report_json = args.work / key / "evaluation.json"
        if args.reuse and report_json.is_file():
            reports[key] = read_report(report_json)
            continue
        if data == "phantoms":
            folder: Path | None = heldout_phantoms(heldout_dir, args.cases, args.seed)
        else:
            folder = spleen8_dataset(args.spleen8, args.work / "spleen8-data")
        if folder is None:
            log.warning("no %s: skipped", args.spleen8)
            continue
        bundle = bundle or load_bundle(args.bundle)

        def progress(i: int, n: int, case: str, sec: float, key: str = key) -> None:
            log.info("%s: case %d/%d %s in %.0f s", key, i + 1, n, case, sec)

        reports[key] = evaluate_dataset(
            bundle, folder, steps=args.steps, ensemble=args.ensemble, targets=targets, on_case=progress
        )
        write_report(reports[key], args.work / key)

    # The two ceilings (training/ceiling.py), on the held-out phantoms; each computed unless --reuse finds it.
    ceiling_json, grid_json = args.work / "ceiling.json", args.work / "grid_ceiling.json"
    missing = [p for p in (ceiling_json, grid_json) if not (args.reuse and p.is_file())]
    if missing and "heldout" in reports:
        from dataclasses import asdict

        from training.ceiling import grid_ceiling, mask_ae_ceiling

        bundle = bundle or load_bundle(args.bundle)
        folder = heldout_phantoms(heldout_dir, args.cases, args.seed)
        if ceiling_json in missing:
            rows = mask_ae_ceiling(bundle, folder, targets=targets)
            ceiling_json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
        if grid_json in missing:
            rows = grid_ceiling(bundle.config.preprocess, folder, bundle.vocabulary, targets=targets)
            grid_json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    ceiling = json.loads(ceiling_json.read_text()) if ceiling_json.is_file() else None
    grid_rows = json.loads(grid_json.read_text()) if grid_json.is_file() else None
    discussion_md = args.work / "discussion.md"
    if args.discussion is not None:
        discussion_md.parent.mkdir(parents=True, exist_ok=True)
        discussion_md.write_text(args.discussion.read_text())
    if not discussion_md.is_file() and COMMITTED_DISCUSSION.is_file():
        discussion_md = COMMITTED_DISCUSSION  # the analysis of the shipped bundle, kept in the repo
    discussion = discussion_md.read_text() if discussion_md.is_file() else None

    ablation_json = args.work / "ablation" / "ablation.json"
    if args.ablation:
        from training.ablation import ensure_heldout, run_ablation
        from training.config import load_train_config

        base = load_train_config(REPO / "training" / "configs" / "demo.yaml")
        heldout = ensure_heldout(heldout_dir, args.cases, args.seed)
        run_ablation(
            base, args.run_dir / "checkpoints", args.work / "ablation", steps=args.ablation_steps,
            minutes=args.ablation_minutes, heldout=heldout, eval_cases=args.ablation_cases, eval_steps=None,
            eval_ensemble=args.ablation_ensemble, targets=["liver", "spleen", "kidney_right", "kidney_left", "pancreas"],
        )
    if not ablation_json.is_file() and COMMITTED_ABLATION.is_file():
        ablation_json = COMMITTED_ABLATION  # the last ablation run, kept in the repo (it takes about an hour)
    ablation = json.loads(ablation_json.read_text()) if ablation_json.is_file() else None
    if ablation is not None and args.ablation_note:
        ablation["note"] = args.ablation_note
        ablation_json.write_text(json.dumps(ablation, indent=2) + "\n")

    earlier_runs = [(meta, stage_seconds(meta, None)) for meta in lineage(bundle_meta)]
    data_paths = [Path(p) for p in bundle_meta.get("provenance", {}).get("data", [])]
    spleen_in_training = any("spleen" in p.name for p in data_paths)
    card = render_card(
        args.bundle, bundle_meta, stage_seconds(bundle_meta, args.run_dir), parameter_counts(args.bundle),
        reports.get("heldout"), reports.get("spleen8"), spleen_in_training, ablation,
        eval_hardware=f"{cpu_description()}, {platform.system()}", command="python scripts/model_card.py"
        + (" --ablation" if ablation is not None else ""),
        ceiling=ceiling, discussion=discussion, earlier_runs=earlier_runs, grid_ceiling=grid_rows,
    )
    args.card.write_text(card)
    sys.stdout.write(f"wrote {args.card}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
