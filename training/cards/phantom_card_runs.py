"""The measurements behind the phantom-lineage card: evaluations, ceilings and the ablation, computed or reused.

:func:`write_phantom_card` is the whole job, as a list of steps: evaluate the bundle on held-out
phantoms (new seeds, never used in training) and on MSD ``spleen_8`` when the shared copy is
there, measure the grid and mask-AE ceilings on the held-out cases, run the paper's Table-2
ablation when asked, then render the card (:mod:`training.cards.phantom_card`) from those files.
Every result goes to ``options.work`` (``heldout/evaluation.json``, ``spleen8/evaluation.json``,
``ceiling.json``, ``grid_ceiling.json``, ``ablation/ablation.json``), so ``reuse`` re-renders
without recomputing. ``scripts/model_card.py`` is the command line.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.cards.phantom_card import PhantomCardInputs, render_card
from training.cards.phantom_lineage import demo_configs, lineage, stage_seconds
from training.provenance import repository_root

if TYPE_CHECKING:
    from model.bundle.loaded import LoadedBundle
    from training.evaluation.evaluate import EvaluationReport

__all__ = [
    "ABLATION_TARGETS",
    "PhantomCardOptions",
    "cpu_description",
    "heldout_phantoms",
    "parameter_counts",
    "spleen8_dataset",
    "write_phantom_card",
]

log = logging.getLogger("model_card")

ABLATION_TARGETS = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas")


@dataclass(frozen=True)
class PhantomCardOptions:
    """What to evaluate and where (``scripts/model_card.py``'s flags)."""

    bundle: Path
    run_dir: Path  # the demo's (last) training run: its CSV logs give stage times the provenance lacks
    work: Path  # evaluation reports, kept for ``reuse``
    card: Path  # the markdown written
    spleen8: Path  # the shared MSD spleen_8 case
    cases: int = 6  # held-out phantom cases
    seed: int = 9000  # held-out phantom seed (never used in training)
    steps: int | None = None  # sampling steps (None: the bundle's)
    ensemble: int | None = None  # ensemble members (None: the bundle's)
    targets: tuple[str, ...] | None = None  # None: all annotated
    reuse: bool = False
    ablation: bool = False
    ablation_steps: int = 600
    ablation_minutes: float | None = None
    ablation_cases: int = 2
    ablation_ensemble: int = 3
    ablation_note: str | None = None
    discussion: Path | None = None  # markdown analysis of the held-out numbers (copied into ``work``)
    command: str = "python scripts/model_card.py"  # how the card names its generator

    @property
    def heldout_dir(self) -> Path:
        return self.work / f"heldout-phantoms-{self.seed}"


def write_phantom_card(options: PhantomCardOptions) -> Path:
    """Evaluate what is missing (or everything without ``reuse``), then write the card; returns its path."""
    bundle_meta = json.loads((options.bundle / "bundle.json").read_text())
    bundle = _lazy_bundle(options.bundle)
    reports = evaluation_reports(options, bundle)
    ceiling, grid_rows = ceilings(options, reports, bundle)
    discussion = discussion_text(options)
    ablation = ablation_results(options)
    inputs = PhantomCardInputs(
        bundle_dir=options.bundle,
        bundle_meta=bundle_meta,
        seconds=stage_seconds(bundle_meta, options.run_dir),
        params=parameter_counts(options.bundle),
        heldout=reports.get("heldout"),
        spleen=reports.get("spleen8"),
        spleen_in_training=any("spleen" in Path(p).name for p in bundle_meta.get("provenance", {}).get("data", [])),
        ablation=ablation,
        eval_hardware=f"{cpu_description()}, {platform.system()}",
        command=options.command + (" --ablation" if ablation is not None else ""),
        configs=demo_configs(),
        ceiling=ceiling,
        discussion=discussion,
        grid_ceiling=grid_rows,
        earlier_runs=[(meta, stage_seconds(meta, None)) for meta in lineage(bundle_meta)],
    )
    options.card.write_text(render_card(inputs))
    return options.card


# --------------------------------------------------------------------------- steps
def _lazy_bundle(path: Path) -> Callable[[], LoadedBundle]:
    """The bundle, loaded on first use and then kept (a fully reused card never loads it)."""

    @cache
    def load() -> LoadedBundle:
        from model.bundle.loaded import load_bundle

        return load_bundle(path)

    return load


def evaluation_reports(options: PhantomCardOptions, bundle: Callable[[], LoadedBundle]) -> dict[str, EvaluationReport]:
    """``heldout`` (new phantoms) and ``spleen8`` (when the shared case is there): read when reused, else evaluated."""
    from training.evaluation.evaluate import evaluate_dataset, read_report, write_report

    targets = list(options.targets) if options.targets is not None else None
    reports: dict[str, EvaluationReport] = {}
    for key, data in (("heldout", "phantoms"), ("spleen8", "spleen8")):
        report_json = options.work / key / "evaluation.json"
        if options.reuse and report_json.is_file():
            reports[key] = read_report(report_json)
            continue
        if data == "phantoms":
            folder: Path | None = heldout_phantoms(options.heldout_dir, options.cases, options.seed)
        else:
            folder = spleen8_dataset(options.spleen8, options.work / "spleen8-data")
        if folder is None:
            log.warning("no %s: skipped", options.spleen8)
            continue

        def progress(i: int, n: int, case: str, sec: float, key: str = key) -> None:
            log.info("%s: case %d/%d %s in %.0f s", key, i + 1, n, case, sec)

        reports[key] = evaluate_dataset(
            bundle(), folder, steps=options.steps, ensemble=options.ensemble, targets=targets, on_case=progress
        )
        write_report(reports[key], options.work / key)
    return reports


def ceilings(
    options: PhantomCardOptions, reports: dict[str, EvaluationReport], bundle: Callable[[], LoadedBundle]
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """The mask-AE and grid ceilings (training/evaluation/ceiling.py) on the held-out phantoms; each computed unless reused."""
    ceiling_json, grid_json = options.work / "ceiling.json", options.work / "grid_ceiling.json"
    missing = [p for p in (ceiling_json, grid_json) if not (options.reuse and p.is_file())]
    if missing and "heldout" in reports:
        from training.evaluation.ceiling import grid_ceiling, mask_ae_ceiling

        targets = list(options.targets) if options.targets is not None else None
        loaded = bundle()
        folder = heldout_phantoms(options.heldout_dir, options.cases, options.seed)
        if ceiling_json in missing:
            rows = mask_ae_ceiling(loaded, folder, targets=targets)
            ceiling_json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
        if grid_json in missing:
            rows = grid_ceiling(loaded.config.preprocess, folder, loaded.vocabulary, targets=targets)
            grid_json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    ceiling = json.loads(ceiling_json.read_text()) if ceiling_json.is_file() else None
    grid_rows = json.loads(grid_json.read_text()) if grid_json.is_file() else None
    return ceiling, grid_rows


def discussion_text(options: PhantomCardOptions) -> str | None:
    """The analysis of the held-out numbers: ``options.discussion`` (kept in ``work``), else the committed one."""
    discussion_md = options.work / "discussion.md"
    if options.discussion is not None:
        discussion_md.parent.mkdir(parents=True, exist_ok=True)
        discussion_md.write_text(options.discussion.read_text())
    committed = repository_root() / "docs" / "model_card" / "discussion.md"
    if not discussion_md.is_file() and committed.is_file():
        discussion_md = committed  # the analysis of the shipped bundle, kept in the repo
    return discussion_md.read_text() if discussion_md.is_file() else None


def ablation_results(options: PhantomCardOptions) -> dict[str, Any] | None:
    """The Table-2 ablation: run when asked, else the last run in ``work``, else the committed one."""
    repo = repository_root()
    ablation_json = options.work / "ablation" / "ablation.json"
    if options.ablation:
        from training.cards.ablation import ensure_heldout, run_ablation
        from training.config import load_train_config

        base = load_train_config(repo / "training" / "configs" / "demo.yaml")
        heldout = ensure_heldout(options.heldout_dir, options.cases, options.seed)
        run_ablation(
            base, options.run_dir / "checkpoints", options.work / "ablation", steps=options.ablation_steps,
            minutes=options.ablation_minutes, heldout=heldout, eval_cases=options.ablation_cases, eval_steps=None,
            eval_ensemble=options.ablation_ensemble, targets=list(ABLATION_TARGETS),
        )
    committed = repo / "docs" / "model_card" / "ablation.json"
    if not ablation_json.is_file() and committed.is_file():
        ablation_json = committed  # the last ablation run, kept in the repo (it takes about an hour)
    ablation = json.loads(ablation_json.read_text()) if ablation_json.is_file() else None
    if ablation is not None and options.ablation_note:
        ablation["note"] = options.ablation_note
        ablation_json.write_text(json.dumps(ablation, indent=2) + "\n")
    return ablation


# --------------------------------------------------------------------------- data and hardware
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
    """``cases`` phantoms from ``seed`` in ``folder``, written unless a set of that size is there."""
    from training.synthetic.phantoms import write_phantom_dataset

    meta = folder / "dataset.json"
    if meta.is_file() and json.loads(meta.read_text()).get("numTraining") == cases:
        return folder
    return write_phantom_dataset(folder, cases, seed)


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
    """Parameters per network (the first component of each weight name) in the bundle's safetensors."""
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
