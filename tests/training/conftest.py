"""Fixtures for the training tests: small phantom datasets in the three layouts the readers
accept (MSD, nnU-Net v2, plain folder + label map) and tiny training configs.

Everything is small on purpose (64x64x16 phantoms at 6x6x8 mm, the 64² tiny model): the whole
training suite has to stay around two minutes on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "training" / "configs" / "tiny.yaml"
SMALL_SHAPE = (64, 64, 16)
SMALL_SPACING = (6.0, 6.0, 8.0)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    """One intra-op thread by default: these models are tiny, and when the two cores are shared
    with other jobs torch's spinning worker threads made the trainers 5-10x slower (measured:
    a 40-step resume test took 65 s with 2 threads under load, 1.4 s with 1)."""
    import torch

    torch.set_num_threads(int(os.environ.get("LATENTSEG_TEST_THREADS", "1")))


def write_small_phantoms(out: Path, cases: int, seed: int) -> Path:
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    return write_phantom_dataset(out, cases, seed, PhantomSpec(shape=SMALL_SHAPE, spacing=SMALL_SPACING))


@pytest.fixture(scope="session")
def msd_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small phantoms in MSD layout (read-only: copy before editing)."""
    return write_small_phantoms(tmp_path_factory.mktemp("msd") / "phantoms_msd", cases=3, seed=0)


def msd_cases(root: Path) -> list[tuple[Path, Path]]:
    meta = json.loads((root / "dataset.json").read_text())
    return [((root / c["image"]).resolve(), (root / c["label"]).resolve()) for c in meta["training"]]


def relabel(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """New label array: phantom value v -> mapping[v], every other value -> 0."""
    out = np.zeros(label.shape, np.uint8)
    for old, new in mapping.items():
        out[label == old] = new
    return out


def write_like(reference: Path, array: np.ndarray, path: Path) -> Path:
    ref = nib.load(str(reference))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, ref.affine), str(path))
    return path


def write_msd_subset(
    source: Path, out: Path, name: str, labels: dict[str, str], mapping: dict[int, int], cases: int | None = None
) -> Path:
    """An MSD folder from ``source``'s phantoms that annotates only ``mapping``'s phantom values
    (renumbered as given); ``labels`` is the dataset.json label table."""
    training = []
    for image, label in msd_cases(source)[:cases]:
        shutil.copy(image, _mkdir(out / "imagesTr") / image.name)
        data = np.asarray(nib.load(str(label)).dataobj)
        write_like(label, relabel(data, mapping), out / "labelsTr" / label.name)
        training.append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"})
    meta = {"name": name, "labels": labels, "numTraining": len(training), "training": training}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out


def write_nnunet_v2(source: Path, out: Path, labels: dict[str, int], mapping: dict[int, int], name: str | None = None) -> Path:
    """An nnU-Net v2 raw folder (``imagesTr/{case}_0000.nii.gz``, ``labelsTr/{case}.nii.gz``)."""
    for index, (image, label) in enumerate(msd_cases(source)):
        case = f"case_{index:03d}"
        shutil.copy(image, _mkdir(out / "imagesTr") / f"{case}_0000.nii.gz")
        data = np.asarray(nib.load(str(label)).dataobj)
        write_like(label, relabel(data, mapping), out / "labelsTr" / f"{case}.nii.gz")
    meta: dict[str, Any] = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": len(msd_cases(source)),
        "file_ending": ".nii.gz",
    }
    if name is not None:
        meta["name"] = name
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out


def write_plain(source: Path, out: Path, labelmap: dict[str, Any], mapping: dict[int, int]) -> Path:
    """A plain folder: ``images/`` and ``labels/`` with the same file names, plus labelmap.yaml."""
    for image, label in msd_cases(source):
        shutil.copy(image, _mkdir(out / "images") / image.name)
        data = np.asarray(nib.load(str(label)).dataobj)
        write_like(label, relabel(data, mapping), out / "labels" / image.name)
    (out / "labelmap.yaml").write_text(yaml.safe_dump(labelmap))
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- training configs


def write_train_config(path: Path, data: list[Path], **overrides: Any) -> Path:
    """The shipped tiny config with ``data`` and ``overrides`` (top-level keys; dicts are merged one level)."""
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["data"] = [str(d) for d in data]
    raw["out"] = str(path.parent / "run")
    raw["cache_dir"] = str(path.parent / "cache")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def train_config(tmp_path: Path, msd_phantoms: Path) -> Callable[..., Any]:
    """``train_config(**overrides) -> TrainConfig`` on the session's MSD phantoms, in tmp_path."""
    from training.config import load_train_config

    def make(name: str = "config.yaml", data: list[Path] | None = None, **overrides: Any) -> Any:
        path = write_train_config(tmp_path / name, data or [msd_phantoms], **overrides)
        return load_train_config(path)

    return make


def read_log(path: Path) -> list[dict[str, float]]:
    import csv

    with path.open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
