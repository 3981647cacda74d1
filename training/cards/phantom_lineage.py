"""The demo's training lineage: which config and which phantom sets made each bundle version.

A fine-tuned bundle records its parent in ``provenance.init_from``; :func:`lineage` follows that
chain back to the first run, :func:`demo_configs` maps each version to its config in
``training/configs``, and :func:`phantom_data_line` says which ``latentseg phantoms`` commands
wrote the data. The phantom-lineage card (:mod:`training.cards.phantom_card`) reads all three.
Torch-free; the configs are read with PyYAML.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.provenance import repository_root

__all__ = ["DEMO_PHANTOMS", "DEMO_RUN_NOTES", "STAGES", "demo_configs", "lineage", "phantom_data_line", "stage_seconds"]

log = logging.getLogger("model_card")

STAGES = ("mask-ae", "image-vae", "diffusion")

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


def demo_configs(repo: Path | None = None) -> dict[str, dict[str, str]]:
    """bundle version -> {file, out, note, data} of the demo training configs in ``training/configs``."""
    import yaml

    repo = repo or repository_root()
    out: dict[str, dict[str, str]] = {}
    for name, note in DEMO_RUN_NOTES.items():
        path = repo / "training" / "configs" / name
        if not path.is_file():
            continue
        raw = yaml.safe_load(path.read_text())
        run_dir = (path.parent / str(raw.get("out", ""))).resolve()
        shown = run_dir.relative_to(repo) if run_dir.is_relative_to(repo) else run_dir
        data = ",".join(Path(str(d)).name for d in raw.get("data", []))
        out[str(raw.get("bundle_version"))] = {
            "file": f"training/configs/{name}", "out": str(shown), "note": note, "data": data,
        }
    return out


def lineage(bundle_meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifests of the bundles ``bundle_meta`` was fine-tuned from (provenance ``init_from``), oldest
    first; the chain stops, with a warning, at a parent whose folder is gone or now holds another bundle
    (a bundle fine-tuned in place: its parent's folder holds the child, so the path leads back to itself)."""
    chain: list[dict[str, Any]] = []
    meta = bundle_meta
    while (parent := meta.get("provenance", {}).get("init_from") or {}).get("path") and len(chain) < 32:
        manifest = Path(parent["path"]) / "bundle.json"
        if not manifest.is_file():
            log.warning("parent bundle %s not found: it and earlier training runs are left out of the card",
                        parent["path"])
            break
        found = json.loads(manifest.read_text())
        wanted = parent.get("version")
        if wanted is not None and found.get("version") != wanted:
            log.warning("parent bundle %s %s is no longer at %s (it holds %s): earlier runs are left out of the card",
                        parent.get("name"), wanted, parent["path"], found.get("version"))
            break
        meta = found
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


def stage_seconds(bundle_meta: dict[str, Any], run_dir: Path | None) -> dict[str, float | None]:
    """Wall time per stage: provenance.stages[stage].seconds, else the last row of the run's CSV log."""
    stages = bundle_meta.get("provenance", {}).get("stages", {})
    out: dict[str, float | None] = {}
    for stage in STAGES:
        seconds = (stages.get(stage) or {}).get("seconds")
        if seconds is None and run_dir is not None and (run_dir / "logs" / f"{stage}.csv").is_file():
            with (run_dir / "logs" / f"{stage}.csv").open() as fh:
                rows = list(csv.DictReader(fh))
            seconds = float(rows[-1]["seconds"]) if rows and rows[-1].get("seconds") else None
        out[stage] = seconds
    return out
