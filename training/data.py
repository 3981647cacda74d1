"""Dataset folders -> cached model-grid cases -> 2-D (patch, target) training examples.

Readers
    Medical Segmentation Decathlon (``dataset.json`` with ``"labels": {"1": "liver"}``,
    ``imagesTr/``, ``labelsTr/``), nnU-Net v2 raw (``"labels": {"liver": 1}``, images
    ``{case}_0000.nii.gz``) and a plain folder (``images/`` + ``labels/`` with the same file
    names, plus a ``labelmap.json``/``.yaml``: ``{"name": ..., "labels": {"1": "liver"}}``).

Label mapping
    A dataset whose name or alias is in the vocabulary's mapping table uses that table;
    otherwise its label names are resolved through the vocabulary (names and synonyms).
    Binary masks follow the vocabulary's semantics: an organ's mask includes the lesions that
    lie within it (on the same side), and a label covering both sides is split at the body's
    midline. The set of targets each dataset *annotates* travels with every case, and only
    those targets ever produce examples: an unannotated target is never trained as background.

Preprocessing is ``model.inference.preprocessing`` (the inference code), then a crop to the body's
bounding box; results are cached as ``.npz`` keyed by file, size, mtime and config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import yaml

from model.bundle.config import PreprocessConfig
from model.errors import UserError
from model.inference.preprocessing import Volume, body_mask, context_offsets, load_nifti, scale_intensity, to_model_grid
from model.inference.statistics import centre_x, on_wrong_side
from model.targets.vocabulary import DatasetLabelMap, UnknownDatasetError, Vocabulary, usual_side
from training.augmentation.contrast_phase import ContrastPhaseAugmenter

log = logging.getLogger(__name__)


class DatasetFormatError(UserError, ValueError):
    """A dataset folder cannot be read; the message says what is wrong."""


@dataclass(frozen=True)
class CaseFiles:
    image: Path
    label: Path


@dataclass(frozen=True)
class DatasetSource:
    """A dataset folder: its cases and how its label values map to vocabulary targets."""

    root: Path
    label_map: DatasetLabelMap
    cases: tuple[CaseFiles, ...]

    @property
    def name(self) -> str:
        return self.label_map.name


# --------------------------------------------------------------------------- readers
def _snake_case(name: str) -> str:
    """A valid dataset name for a label map: "Dataset003_Liver" -> "dataset003_liver"."""
    key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return key if key[:1].isalpha() else f"dataset_{key}".rstrip("_")


def _label_map_from_names(
    name: str, labels: dict[int, str], vocabulary: Vocabulary, folder: str | None = None
) -> DatasetLabelMap:
    """Known datasets use the mapping table; others resolve their label names through the vocabulary.

    ``folder`` (the dataset folder's name, e.g. MSD's "Task03_Liver", whose dataset.json says only
    "Liver" and labels "cancer") identifies a known dataset when the label names cannot be resolved.
    """
    try:
        return vocabulary.dataset(name)
    except UnknownDatasetError:
        pass
    pairs: list[tuple[int, str]] = []
    unknown: list[str] = []
    for value, label_name in sorted(labels.items()):
        if value == 0:
            continue
        try:
            pairs.append((value, vocabulary.get(label_name).name))
        except ValueError:
            unknown.append(f"{value}={label_name!r}")
    if unknown and folder:
        try:
            return vocabulary.dataset(folder)
        except UnknownDatasetError:
            pass
    if unknown:
        known = _known_map_agreeing_with(dict(pairs), vocabulary)
        if known is not None:
            # e.g. TotalSegmentator's 117 labels under another dataset name: the mapping table knows which
            # of them are vocabulary targets (lung lobes -> lungs, kidney cysts -> kidneys); the rest are
            # simply not annotated targets, so they are never trained, as target or background.
            log.info("dataset %r: its label values agree with the mapping table's %r; using that", name, known.name)
            return known
        raise DatasetFormatError(
            f"dataset {name!r}: labels {', '.join(unknown)} are not vocabulary targets or synonyms; "
            f"use a known dataset name or rename them (valid: {', '.join(vocabulary.names())})"
        )
    if not pairs:
        raise DatasetFormatError(f"dataset {name!r}: no labels besides background (0)")
    return DatasetLabelMap(name=_snake_case(name), labels=tuple(pairs))


def _known_map_agreeing_with(resolved: dict[int, str], vocabulary: Vocabulary, minimum: int = 3) -> DatasetLabelMap | None:
    """The mapping table's dataset whose label values give the same targets as every label name that
    resolved (at least ``minimum`` of them), if exactly one does."""
    matches = []
    for known in vocabulary.datasets:
        table = dict(known.labels)
        agree = [v for v, n in resolved.items() if table.get(v) == n]
        if len(agree) >= minimum and len(agree) == len(resolved):
            matches.append(known)
    return matches[0] if len(matches) == 1 else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetFormatError(f"{path}: cannot read JSON ({exc})") from exc


def read_msd(root: Path, vocabulary: Vocabulary) -> DatasetSource:
    meta = _read_json(root / "dataset.json")
    labels = {int(k): str(v) for k, v in meta.get("labels", {}).items()}
    label_map = _label_map_from_names(str(meta.get("name", root.name)), labels, vocabulary, root.name)
    cases = []
    for entry in meta.get("training", []):
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve()
        if not image.is_file() or not label.is_file():
            raise DatasetFormatError(f"{root}: dataset.json lists {entry['image']} / {entry['label']} but a file is missing")
        cases.append(CaseFiles(image, label))
    if not cases:
        raise DatasetFormatError(f"{root}: dataset.json lists no training cases")
    return DatasetSource(root, label_map, tuple(cases))


def read_nnunet_v2(root: Path, vocabulary: Vocabulary) -> DatasetSource:
    meta = _read_json(root / "dataset.json")
    labels = {int(v): str(k) for k, v in meta.get("labels", {}).items() if not isinstance(v, list)}
    ending = meta.get("file_ending", ".nii.gz")
    name = str(meta.get("name", root.name))
    label_map = _label_map_from_names(name, labels, vocabulary, root.name)
    cases = []
    for label in sorted((root / "labelsTr").glob(f"*{ending}")):
        case_id = label.name[: -len(ending)]
        image = root / "imagesTr" / f"{case_id}_0000{ending}"
        if not image.is_file():
            raise DatasetFormatError(f"{root}: {label.name} has no image {image.name}")
        cases.append(CaseFiles(image, label))
    if not cases:
        raise DatasetFormatError(f"{root}: no cases in labelsTr/")
    return DatasetSource(root, label_map, tuple(cases))


def read_plain(root: Path, vocabulary: Vocabulary) -> DatasetSource:
    mapfile = next((p for p in (root / "labelmap.json", root / "labelmap.yaml", root / "labelmap.yml") if p.is_file()), None)
    if mapfile is None:
        raise DatasetFormatError(f"{root}: a plain dataset needs labelmap.json or labelmap.yaml")
    try:
        meta = yaml.safe_load(mapfile.read_text()) or {}
        labels = {int(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    except (yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:
        raise DatasetFormatError(
            f"{mapfile}: expected {{name: ..., labels: {{1: liver, ...}}}} with integer label values ({exc})"
        ) from exc
    label_map = _label_map_from_names(str(meta.get("name", root.name)), labels, vocabulary, root.name)
    cases = []
    for image in sorted((root / "images").glob("*.nii*")):
        label = root / "labels" / image.name
        if not label.is_file():
            raise DatasetFormatError(f"{root}: image {image.name} has no labels/{image.name}")
        cases.append(CaseFiles(image, label))
    if not cases:
        raise DatasetFormatError(f"{root}: no images in images/")
    return DatasetSource(root, label_map, tuple(cases))


def case_id(files: CaseFiles) -> str:
    """A case's name: its label file's name without the extension ("ts_a_torso", "spleen_8")."""
    name = files.label.name
    for ending in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name.split(".")[0]


def select_cases(
    sources: Sequence[DatasetSource], *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[DatasetSource]:
    """Keep only the ``include`` cases (all when empty) and drop the ``exclude`` ones, by :func:`case_id`.

    Used to leave a patient out of training and to score only that patient. A named case that no
    dataset holds is an error (a typo would otherwise silently train on everything); a dataset left
    with no case is dropped."""
    known = {case_id(c) for s in sources for c in s.cases}
    missing = sorted((set(include) | set(exclude)) - known)
    if missing:
        raise DatasetFormatError(f"no case named {', '.join(missing)} in the data (cases: {', '.join(sorted(known))})")
    kept: list[DatasetSource] = []
    for source in sources:
        cases = tuple(
            c for c in source.cases if (not include or case_id(c) in include) and case_id(c) not in set(exclude)
        )
        if cases:
            kept.append(DatasetSource(source.root, source.label_map, cases))
    if not kept:
        raise DatasetFormatError("no case left after selecting cases")
    return kept


def read_dataset(root: str | Path, vocabulary: Vocabulary) -> DatasetSource:
    """Detect the layout of ``root`` and read it."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: not a folder")
    if (root / "dataset.json").is_file():
        meta = _read_json(root / "dataset.json")
        labels = meta.get("labels", {})
        if labels and all(str(k).lstrip("-").isdigit() for k in labels):
            return read_msd(root, vocabulary)
        return read_nnunet_v2(root, vocabulary)
    return read_plain(root, vocabulary)


# --------------------------------------------------------------------------- masks
def body_midline_x(body: np.ndarray, affine: np.ndarray) -> float | None:
    """World x (mm) of the body's centre of mass, the patient's sagittal midline; None without body."""
    return centre_x(body, affine)


def target_masks(
    label: np.ndarray,
    affine: np.ndarray,
    label_map: DatasetLabelMap,
    vocabulary: Vocabulary,
    midline_x: float | None = None,
) -> dict[str, np.ndarray]:
    """Binary mask per annotated target, on the label's own grid.

    Organs include the lesions that lie within them (on the same side); labels covering both
    sides are split at the midline ``midline_x`` (world x in mm; :func:`prepare_case` passes the
    body's, see :func:`body_midline_x`), by default the centre of the labelled voxels' x extent.
    RAS+: +x is the patient's right, so the patient's left is x < midline.
    """
    masks: dict[str, np.ndarray] = {}
    for value, name in label_map.labels:
        masks[name] = masks.get(name, np.zeros(label.shape, bool)) | (label == value)
    sides: dict[str, np.ndarray] = {}
    if label_map.lateral_splits or any(len(vocabulary.get(n).within) > 1 for n in masks):
        ijk = np.indices(label.shape, dtype=np.float32).reshape(3, -1)
        world_x = (affine[0, :3] @ ijk + affine[0, 3]).reshape(label.shape)
        if midline_x is None:
            labelled = world_x[label > 0]
            midline_x = float(labelled.min() + labelled.max()) / 2 if labelled.size else 0.0
        sides = {"left": world_x < midline_x, "right": world_x >= midline_x}
    for value, left, right in label_map.lateral_splits:
        both = label == value
        masks[left] = masks.get(left, np.zeros(label.shape, bool)) | (both & sides["left"])
        masks[right] = masks.get(right, np.zeros(label.shape, bool)) | (both & sides["right"])
    for name in list(masks):
        organs = [o for o in vocabulary.get(name).within if o in masks]
        for organ in organs:
            side = vocabulary.get(organ).side
            lesion = masks[name] if side is None else masks[name] & sides[side]
            masks[organ] = masks[organ] | lesion
    return masks


def laterality_problems(
    masks: dict[str, np.ndarray], affine: np.ndarray, midline_x: float | None, vocabulary: Vocabulary
) -> list[str]:
    """Targets whose labelled voxels lie, on average, on the wrong side of the body midline (by the review flag's
    rule, :func:`model.inference.statistics.on_wrong_side`).

    A lateral target's side comes from the vocabulary (``kidney_left``), an unpaired organ's from
    :func:`model.targets.vocabulary.usual_side` (the liver on the right, the spleen on the left). Every such organ on the wrong side
    means a file whose header mirrors the patient (or, rarely, situs inversus): trained as it is, it teaches
    the model a mirrored body.
    """
    if midline_x is None:
        return []
    problems = []
    for name, mask in sorted(masks.items()):
        side = vocabulary.get(name).side or usual_side(name)
        centre = None if side is None else centre_x(mask, affine)
        if centre is None:
            continue
        offset = centre - midline_x  # RAS+: > 0 is the patient's right
        if on_wrong_side(side, offset):
            problems.append(f"{name} lies {abs(offset):.0f} mm to the patient's {'right' if offset > 0 else 'left'} "
                            f"of the midline (expected: {side})")
    return problems


# --------------------------------------------------------------------------- cached cases
@dataclass(frozen=True)
class PreparedCase:
    """One case on the model grid, cropped to the body. ``bits`` holds target masks: bit ``id``."""

    dataset: str
    name: str
    image: np.ndarray  # (X, Y, Z) float32 in [0, 1]
    bits: np.ndarray  # (X, Y, Z) uint64, bit k set where target id k is present
    annotated: tuple[int, ...]  # vocabulary ids this case's dataset annotates

    def mask(self, target_id: int) -> np.ndarray:
        return (self.bits >> np.uint64(target_id)) & np.uint64(1)

    def present(self) -> tuple[int, ...]:
        found = np.bitwise_or.reduce(self.bits, axis=None)
        return tuple(t for t in self.annotated if (int(found) >> t) & 1)


def _cache_key(files: CaseFiles, config: PreprocessConfig, label_map: DatasetLabelMap, vocabulary: Vocabulary) -> str:
    h = hashlib.sha256()
    for path in (files.image, files.label):
        stat = path.stat()
        h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    h.update(config.model_dump_json().encode())
    h.update(repr(label_map).encode())
    h.update(vocabulary.sha256().encode())
    h.update(b"v3")
    return h.hexdigest()[:24]


def prepare_case(
    files: CaseFiles,
    label_map: DatasetLabelMap,
    vocabulary: Vocabulary,
    config: PreprocessConfig,
    cache_dir: Path | None = None,
) -> PreparedCase:
    """Preprocess exactly as at inference, crop to the body, and cache."""
    key = _cache_key(files, config, label_map, vocabulary)
    cached = cache_dir / f"{key}.npz" if cache_dir is not None else None
    annotated = tuple(sorted(vocabulary.get(n).id for n in label_map.annotated))
    if cached is not None and cached.is_file():
        with np.load(cached) as npz:
            return PreparedCase(label_map.name, files.image.name, npz["image"], npz["bits"], annotated)
    volume = load_nifti(files.image)
    label_img = nib.load(str(files.label))
    if int(np.prod(label_img.shape)) != int(np.prod(volume.shape)) or label_img.shape[:3] != volume.shape:
        raise DatasetFormatError(
            f"{files.label}: label shape {tuple(label_img.shape)} does not match image {files.image.name} {volume.shape}"
        )
    label = np.asarray(label_img.dataobj).astype(np.int32).reshape(volume.shape)
    grid = to_model_grid(volume, config)
    label_grid = to_model_grid(Volume(label.astype(np.float32), volume.affine), config, mode="nearest").hu.numpy()
    if label_grid.shape != tuple(grid.hu.shape):
        raise DatasetFormatError(f"{files.label}: label grid does not match image grid")
    body = body_mask(grid.hu, config).numpy()
    bits = np.zeros(label_grid.shape, dtype=np.uint64)
    midline_x = body_midline_x(body, grid.affine)
    masks = target_masks(np.rint(label_grid).astype(np.int32), grid.affine, label_map, vocabulary, midline_x)
    problems = laterality_problems(masks, grid.affine, midline_x, vocabulary)
    if problems:
        log.warning("%s: %s. Is its left-right axis flipped (a header that mirrors the patient)? Trained as it is, "
                    "it teaches a mirrored body; fix the files (as scripts/msd_spleen8_dataset.py does)",
                    files.label, "; ".join(problems))
    for name, mask in masks.items():
        bits |= mask.astype(np.uint64) << np.uint64(vocabulary.get(name).id)
    image = scale_intensity(grid.hu, config).numpy()
    if body.any():
        lo = np.argwhere(body).min(axis=0)
        hi = np.argwhere(body).max(axis=0) + 1
        crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        image, bits = image[crop], bits[crop]
    case = PreparedCase(label_map.name, files.image.name, np.ascontiguousarray(image), np.ascontiguousarray(bits), annotated)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")  # one per process: DDP ranks race here
        np.savez_compressed(tmp, image=case.image, bits=case.bits)
        tmp.replace(cached)
    return case


def prepare_sources(
    sources: Sequence[DatasetSource], vocabulary: Vocabulary, config: PreprocessConfig, cache_dir: Path | None
) -> dict[str, list[PreparedCase]]:
    """All cases of all datasets, grouped by dataset name."""
    grouped: dict[str, list[PreparedCase]] = {}
    for source in sources:
        for files in source.cases:
            grouped.setdefault(source.name, []).append(prepare_case(files, source.label_map, vocabulary, config, cache_dir))
    return grouped


def restrict_targets(
    cases: dict[str, list[PreparedCase]], annotated: Sequence[str], targets: Sequence[str], vocabulary: Vocabulary
) -> tuple[dict[str, list[PreparedCase]], list[str]]:
    """Train only ``targets``: each case keeps those of its annotated targets (the others become not
    annotated, never background); a dataset that annotates none of them is dropped."""
    missing = sorted(set(targets) - set(annotated))
    if missing:
        raise DatasetFormatError(f"targets {', '.join(missing)} are annotated by none of the datasets")
    wanted = {vocabulary.get(t).id for t in targets}
    kept: dict[str, list[PreparedCase]] = {}
    for dataset, group in cases.items():
        for case in group:
            ids = tuple(i for i in case.annotated if i in wanted)
            if ids:
                kept.setdefault(dataset, []).append(replace(case, annotated=ids))
    return kept, [n for n in annotated if vocabulary.get(n).id in wanted]


# --------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # (B, C_window, H, W) in [0, 1]: the slice, then any context slices
    masks: torch.Tensor  # (B, 1, H, W) in {0, 1}
    target_ids: torch.Tensor  # (B,) int64 vocabulary ids

    @property
    def slices(self) -> torch.Tensor:
        """(B, 1, H, W): the annotated slice of each window, without context (what the image VAE sees)."""
        return self.images[:, :1]


class PatchSampler:
    """Paper §3.1: a dataset uniformly (or by ``dataset_weights``), then a case, then a 2-D axial patch and one of the
    dataset's annotated targets; with probability ``foreground_prob`` the patch is centred
    on a voxel of a target present in the case (foreground oversampling), otherwise it is
    uniform over the case (so empty masks of annotated targets occur naturally). With
    ``context_slices`` k, each image patch also carries the k slices either side
    (:func:`model.inference.preprocessing.context_offsets`; the edge slice repeats past the volume's ends).
    ``augment(image, mask, seed)`` (e.g. :class:`training.augmentation.augment.PatchAugmenter`) transforms each
    example; its seed is drawn from the sampler's generator, so a resumed run repeats the stream.
    ``contrast`` (:class:`training.augmentation.contrast_phase.ContrastPhaseAugmenter`) first re-enhances the image
    window as another contrast phase, from the case's full structure labels (before ``augment``).

    ``negative_prob`` adds near-miss negatives: with that probability (taken from what would have been
    uniform draws) the patch shows a target's usual place (the in-plane position of one of its voxels) on a
    slice *just beyond* its cranio-caudal extent (within ``negative_margin`` slices, where the target is
    absent), with an empty mask. Uniform draws seldom land there, yet that is where a 2.5-D model confuses
    neighbours: a left kidney drawn on the spleen above it, a pancreas on the stomach. A target that fills
    every slice of a case has no such slice, and the draw falls back to the uniform one."""

    def __init__(
        self,
        cases: dict[str, list[PreparedCase]],
        patch_size: tuple[int, int],
        *,
        foreground_prob: float = 0.7,
        seed: int = 0,
        dataset_weights: dict[str, float] | None = None,
        context_slices: int = 0,
        augment: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None,
        contrast: ContrastPhaseAugmenter | None = None,
        negative_prob: float = 0.0,
        negative_margin: int = 20,
    ) -> None:
        if not 0.0 <= negative_prob <= 1.0 - foreground_prob + 1e-9:
            raise ValueError(f"negative_prob must be in [0, 1 - foreground_prob]; got {negative_prob} with foreground_prob {foreground_prob}")
        if negative_margin < 1:
            raise ValueError(f"negative_margin must be at least one slice; got {negative_margin}")
        self.negative_prob = negative_prob
        self.negative_margin = negative_margin
        self._near_cache: dict[tuple[int, int], np.ndarray] = {}
        self.cases = {k: v for k, v in cases.items() if v}
        self.augment = augment
        self.contrast = contrast
        self._median_cache: dict[int, dict[int, float]] = {}
        self.offsets = context_offsets(context_slices)
        if not self.cases:
            raise ValueError("no training cases")
        self.datasets = sorted(self.cases)
        weights = dataset_weights or {}
        unknown = sorted(set(weights) - set(self.datasets))
        if unknown:
            raise ValueError(f"dataset_weights names unknown datasets {unknown}; datasets are {self.datasets}")
        w = np.asarray([float(weights.get(d, 1.0)) for d in self.datasets])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("dataset_weights must be non-negative and not all zero")
        self.dataset_probs = w / w.sum()  # uniform by default, as in the paper
        self.patch_size = patch_size
        self.foreground_prob = foreground_prob
        self.rng = np.random.default_rng(seed)
        self._present_cache: dict[int, tuple[int, ...]] = {}
        self._voxel_cache: dict[tuple[int, int], np.ndarray] = {}

    def _patch(self, array: np.ndarray, z: int, cx: int, cy: int) -> np.ndarray:
        h, w = self.patch_size
        out = np.zeros((h, w), dtype=array.dtype)
        x0, y0 = cx - h // 2, cy - w // 2
        xs, ys = max(x0, 0), max(y0, 0)
        xe, ye = min(x0 + h, array.shape[0]), min(y0 + w, array.shape[1])
        if xe > xs and ye > ys:
            out[xs - x0 : xe - x0, ys - y0 : ye - y0] = array[xs:xe, ys:ye, z]
        return out

    def _window(self, array: np.ndarray, z: int, cx: int, cy: int) -> np.ndarray:
        """(C, H, W): the patch at slice z and at each context offset (the edge slice repeats past the ends)."""
        depth = array.shape[2]
        return np.stack([self._patch(array, min(max(z + o, 0), depth - 1), cx, cy) for o in self.offsets])

    def _present(self, case: PreparedCase) -> tuple[int, ...]:
        key = id(case)
        if key not in self._present_cache:
            self._present_cache[key] = case.present()
        return self._present_cache[key]

    def _voxels(self, case: PreparedCase, target: int) -> np.ndarray:
        """Up to 4096 voxel coordinates of ``target`` in ``case`` (computed once)."""
        key = (id(case), target)
        if key not in self._voxel_cache:
            voxels = np.argwhere(case.mask(target))
            if len(voxels) > 4096:
                voxels = voxels[np.random.default_rng(target).choice(len(voxels), 4096, replace=False)]
            self._voxel_cache[key] = voxels
        return self._voxel_cache[key]

    def near_slices(self, case: PreparedCase, target: int) -> np.ndarray:
        """Slices of ``case`` where ``target`` is absent but within ``negative_margin`` slices of one where it is present."""
        key = (id(case), target)
        if key not in self._near_cache:
            on = case.mask(target).any(axis=(0, 1))
            where = np.flatnonzero(on)
            if len(where) == 0:
                near = np.zeros(0, dtype=np.int64)
            else:
                distance = np.abs(np.arange(len(on))[:, None] - where[None, :]).min(axis=1)
                near = np.flatnonzero(~on & (distance <= self.negative_margin))
            self._near_cache[key] = near
        return self._near_cache[key]

    def example(self) -> tuple[np.ndarray, np.ndarray, int]:
        rng = self.rng
        dataset = self.datasets[rng.choice(len(self.datasets), p=self.dataset_probs)]
        case = self.cases[dataset][rng.integers(len(self.cases[dataset]))]
        present = self._present(case)
        draw = rng.random() if present else 1.0
        near_miss = False
        if draw < self.foreground_prob + self.negative_prob:
            target = present[rng.integers(len(present))]
            voxels = self._voxels(case, target)
            cx, cy, z = voxels[rng.integers(len(voxels))]
            jitter = np.asarray(self.patch_size) // 4
            cx += int(rng.integers(-jitter[0], jitter[0] + 1))
            cy += int(rng.integers(-jitter[1], jitter[1] + 1))
            if draw >= self.foreground_prob:  # near-miss negative: the same place, on a slice just beyond the target
                near = self.near_slices(case, target)
                near_miss = len(near) > 0
                if near_miss:
                    z = int(near[rng.integers(len(near))])
        if draw >= self.foreground_prob and not near_miss:  # uniform over the case
            target = case.annotated[rng.integers(len(case.annotated))]
            z = int(rng.integers(case.image.shape[2]))
            cx = int(rng.integers(case.image.shape[0]))
            cy = int(rng.integers(case.image.shape[1]))
        image = self._window(case.image, int(z), int(cx), int(cy))
        bits = self._patch(case.bits, int(z), int(cx), int(cy))
        mask = ((bits >> np.uint64(target)) & np.uint64(1)).astype(np.float32)
        if self.contrast is not None:
            key = id(case)
            if key not in self._median_cache:
                self._median_cache[key] = self.contrast.case_medians(case.image, case.bits)
            bits_window = self._window(case.bits, int(z), int(cx), int(cy))
            image = self.contrast(image, bits_window, self._median_cache[key], int(rng.integers(2**63)))
        if self.augment is not None:
            image, mask = self.augment(image, mask, int(rng.integers(2**63)))
        return image, mask, int(target)

    def batch(self, batch_size: int) -> Batch:
        examples = [self.example() for _ in range(batch_size)]
        return Batch(
            images=torch.from_numpy(np.stack([e[0] for e in examples])).float(),
            masks=torch.from_numpy(np.stack([e[1] for e in examples]))[:, None].float(),
            target_ids=torch.tensor([e[2] for e in examples], dtype=torch.long),
        )

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
