"""Which targets a bundle serves: its left-out-patient evaluations -> the manifest's ``validation`` section.

Leave-one-patient-out: each fold's bundle is trained without one patient and scored on that patient
alone (``latentseg evaluate --cases CASE``). Per target, the Dice over every left-out case that
contains it decides whether the bundle trained on everything *serves* it: a target whose mean
left-out Dice is under ``min_dice`` (or that no left-out case contains) is marked ``served: false``,
and the pipeline then refuses it with that reason rather than return noise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.bundle.manifest import MANIFEST_NAME, read_manifest
from training.evaluation.evaluate import EvaluationReport

DEFAULT_MIN_DICE = 0.5


def validation_section(
    reports: Sequence[EvaluationReport], trained_targets: Sequence[str], *, min_dice: float = DEFAULT_MIN_DICE
) -> dict[str, Any]:
    """Per trained target: mean / min Dice over the left-out cases that contain it, and whether it is served."""
    targets: dict[str, Any] = {}
    for target in trained_targets:
        rows = [(rep, r) for rep in reports for r in rep.results if r.target == target and r.truth_voxels > 0]
        if not rows:
            targets[target] = {"dice": None, "cases": [], "served": False, "why": "no left-out case contains it"}
            continue
        dice = [float(r.dice) for _, r in rows]
        mean = float(np.mean(dice))
        targets[target] = {
            "dice": round(mean, 4),
            "dice_min": round(float(np.min(dice)), 4),
            "cases": [r.case for _, r in rows],
            "served": bool(mean >= min_dice),
        }
    return {
        "method": "leave one patient out: each case scored by a bundle trained without it "
        "(ensemble mean > 0.5); served when the mean Dice over the left-out cases is >= min_dice",
        "min_dice": min_dice,
        "folds": [{"bundle": Path(rep.bundle).name if rep.bundle else None, "cases": list(rep.cases),
                   "steps": rep.steps, "ensemble": rep.ensemble} for rep in reports],
        "targets": targets,
    }


def write_validation(bundle: str | Path, section: dict[str, Any]) -> None:
    """Store ``section`` as the bundle's ``validation`` (atomically), then re-read the manifest strictly."""
    folder = Path(bundle)
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["validation"] = section
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    read_manifest(folder)
