"""Per-target statistics of a segmentation, with the ensemble's spread and a review flag.

Torch-free (numpy, scipy and the affine only), so the API, the CLI and the worker share it.
Everything is computed on the input's own voxel grid from the files a job writes (the mean
map, the variance map and the CT), except the ensemble spread: each member's own thresholded
volume, counted on the model grid while the ensemble was reduced to mean and variance
(:func:`model.inference.ensemble.member_mask_overlaps`), so no member is kept in memory.

The JSON layout, its units and the meaning of every key are documented in
``docs/statistics.md``; :data:`SCHEMA_VERSION` changes whenever a key changes meaning.

Conventions

* **Mask** = mean > 0.5 (the mask the label map and the volumes use).
* **Bounding box**: the outer faces of the mask's voxels (each voxel centre ± half a voxel),
  in patient millimetres, in RAS+ (NIfTI: +x left→Right, +y posterior→Anterior, +z
  inferior→Superior) and in LPS+ (DICOM: x and y negated); for an oblique grid, the box
  around the voxel centres grown by half a voxel's extent along each patient axis.
* **Connected components**: 26-connectivity (as the largest-component post-processing).
* **Touches the edge**: a mask voxel lies on a face of the volume, so the structure may be cut
  off by the field of view; the faces are named by the patient direction they face.
* **Ensemble volumes**: each member's probability > 0.5, counted on the model grid (before the
  largest-component post-processing, which applies to the mean only); mean and sd (ddof = 1,
  0 for one member) over members.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from model.targets.vocabulary import SizePrior, Target, size_prior, usual_side

__all__ = [
    "SCHEMA_VERSION",
    "MemberSummary",
    "ReviewPolicy",
    "above_typical_volume",
    "StatisticsWriter",
    "job_statistics",
    "read_statistics",
    "summary_line",
    "target_statistics",
    "write_statistics",
]

SCHEMA_VERSION = 1
STATISTICS_FILE = "statistics.json"
MASK_THRESHOLD = 0.5
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
BODY_HU = -500.0  # the body is what is denser than this (the bundles' preprocess.body_threshold_hu)
SIDE_MARGIN_MM = 15.0  # a sided organ's centre this far on the wrong side of the body's centre is flagged
_DIRECTIONS = (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))  # RAS: (-, +)
UNITS: Mapping[str, str] = {
    "volume_ml": "millilitre (1 ml = 1000 mm³)",
    "ensemble_volume_ml": "millilitre",
    "hu_mean": "Hounsfield units",
    "hu_sd": "Hounsfield units",
    "bbox_ras_mm": "millimetre, patient RAS+",
    "bbox_lps_mm": "millimetre, patient LPS+",
    "axial_extent_mm": "millimetre along the patient's S axis",
    "midline_offset_mm": "millimetre along the patient's R axis, from the body's centre",
    "voxel_count": "voxels of the input grid",
    "quality.high_variance_share": "fraction of the mask's voxels",
    "quality.volume_cv": "sd / mean of the ensemble volumes",
}


@dataclass(frozen=True)
class MemberSummary:
    """One target's ensemble members, reduced to counts on the model grid.

    voxels[e]: member e's voxels with probability > 0.5; intersections[e][f]: voxels above it in
    both e and f; voxel_ml: the model grid's voxel volume in ml.
    """

    voxels: tuple[int, ...]
    intersections: tuple[tuple[int, ...], ...]
    voxel_ml: float

    @classmethod
    def from_counts(cls, voxels: Sequence[int], intersections: Sequence[Sequence[int]], voxel_ml: float) -> MemberSummary:
        return cls(tuple(int(v) for v in voxels), tuple(tuple(int(x) for x in row) for row in intersections),
                   float(voxel_ml))

    @property
    def volumes_ml(self) -> tuple[float, ...]:
        return tuple(v * self.voxel_ml for v in self.voxels)

    def pairwise_dice(self) -> float | None:
        """Mean Dice over member pairs (a pair of empty masks counts 1); None for one member."""
        count = len(self.voxels)
        if count < 2:
            return None
        scores = []
        for e in range(count):
            for f in range(e + 1, count):
                total = self.voxels[e] + self.voxels[f]
                scores.append(1.0 if total == 0 else 2.0 * self.intersections[e][f] / total)
        return float(np.mean(scores))


@dataclass(frozen=True)
class ReviewPolicy:
    """When a target needs a human look (chosen by measurement: docs/statistics.md, MODEL_CARD.md).

    A target is flagged when its mask is empty, when it is smaller than its organ's typical
    range (:func:`model.targets.vocabulary.size_prior`) without touching the volume's edge (a structure
    cut off by the field of view may be small), when it is larger than that range (a field of view
    cannot make an organ bigger: an enlarged organ, or a mask that spilled onto its neighbours), or
    when the ensemble's mean pairwise Dice is below ``min_pairwise_dice`` (the members disagree
    about the shape).
    """

    # 1 - the Youden threshold of (1 - pairwise Dice) for Dice < 0.7 on the validation phantoms
    # (scripts/measure_review_flag.py: 0.246); MODEL_CARD.md, "Review flag".
    min_pairwise_dice: float = 0.755
    high_variance: float = 0.05  # a voxel's variance above this counts as uncertain (quality.high_variance_share)
    size_priors: bool = True


def _centre_ijk(mask: np.ndarray) -> np.ndarray:
    """The mean voxel index of a non-empty boolean mask, from per-axis counts (no index list)."""
    total = float(mask.sum())
    return np.array([float(mask.sum(axis=tuple(a for a in range(3) if a != axis)) @ np.arange(mask.shape[axis]))
                     for axis in range(3)]) / total


def centre_x(mask: np.ndarray, affine: np.ndarray) -> float | None:
    """RAS x (mm) of a boolean mask's centre of mass; None for an empty mask."""
    if not mask.any():
        return None
    row = np.asarray(affine, np.float64)[0]
    return float(row[:3] @ _centre_ijk(mask) + row[3])


def body_centre_x(hu: np.ndarray, affine: np.ndarray) -> float | None:
    """RAS x (mm) of the body's centre (CT > :data:`BODY_HU`), the sagittal midline; None without body."""
    return centre_x(np.asarray(hu) > BODY_HU, affine)


def on_wrong_side(side: str | None, offset_mm: float | None) -> bool:
    """True when a structure that belongs on ``side`` has its centre more than :data:`SIDE_MARGIN_MM` on the other
    side of the midline (``offset_mm``: RAS x from the midline, > 0 on the patient's right)."""
    if side is None or offset_mm is None:
        return False
    return (offset_mm if side == "left" else -offset_mm) > SIDE_MARGIN_MM


def _midline_offset_mm(mask: np.ndarray, box: tuple[slice, ...], affine: np.ndarray, body_x: float) -> float:
    """RAS x (mm) of the mask's centre minus the body's: > 0 on the patient's right."""
    mask_ijk = _centre_ijk(mask[box]) + np.array([s.start for s in box], np.float64)
    return float(np.asarray(affine, np.float64)[0, :3] @ mask_ijk + affine[0, 3]) - body_x


def _voxel_ml(affine: np.ndarray) -> float:
    return abs(float(np.linalg.det(np.asarray(affine, np.float64)[:3, :3]))) / 1000.0


def _box(mask: np.ndarray) -> tuple[slice, ...] | None:
    slices = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    return None if not slices or slices[0] is None else slices[0]


def _bbox_ras(mask_crop: np.ndarray, box: tuple[slice, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) RAS corners of the box around the mask voxels' outer faces."""
    affine = np.asarray(affine, np.float64)
    linear = affine[:3, :3]
    half = 0.5 * np.abs(linear).sum(axis=1)  # half a voxel's extent along each patient axis
    significant = np.abs(linear) > 1e-9 * np.abs(linear).max()
    if (significant.sum(axis=0) == 1).all():  # axis-aligned: the index box's corners are exact
        lo_idx = np.array([s.start for s in box], np.float64)
        hi_idx = np.array([s.stop - 1 for s in box], np.float64)
        corners = np.array(list(itertools.product(*zip(lo_idx, hi_idx, strict=True))), np.float64)
        centres = corners @ linear.T + affine[:3, 3]
    else:
        offset = np.array([s.start for s in box], np.float64)
        centres = (np.argwhere(mask_crop) + offset) @ linear.T + affine[:3, 3]
    return centres.min(axis=0) - half, centres.max(axis=0) + half


def _edges_touched(mask: np.ndarray, affine: np.ndarray) -> list[str]:
    """Patient directions of the volume faces that the mask touches."""
    linear = np.asarray(affine, np.float64)[:3, :3]
    faces = []
    for axis in range(3):
        column = linear[:, axis]
        patient_axis = int(np.argmax(np.abs(column)))
        negative, positive = _DIRECTIONS[patient_axis]
        low_face, high_face = (negative, positive) if column[patient_axis] > 0 else (positive, negative)
        for index, name in ((0, low_face), (mask.shape[axis] - 1, high_face)):
            if np.take(mask, index, axis=axis).any():
                faces.append(name)
    return sorted(set(faces))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _ensemble_volumes(members: MemberSummary | None) -> dict[str, Any] | None:
    if members is None:
        return None
    volumes = np.asarray(members.volumes_ml, np.float64)
    sd = float(volumes.std(ddof=1)) if volumes.size > 1 else 0.0
    return {
        "members": len(volumes),
        "mean": _round(float(volumes.mean()), 3),
        "sd": _round(sd, 3),
        "min": _round(float(volumes.min()), 3),
        "max": _round(float(volumes.max()), 3),
        "each": [_round(float(v), 3) for v in volumes],
    }


def target_statistics(
    target: Target | str,
    mean: np.ndarray,
    variance: np.ndarray | None,
    hu: np.ndarray | None,
    affine: np.ndarray,
    members: MemberSummary | None = None,
    policy: ReviewPolicy = ReviewPolicy(),
    body_x: float | None = None,
) -> dict[str, Any]:
    """One target's entry of ``statistics.json`` (keys and units: docs/statistics.md).

    mean, variance, hu: (I, J, K) arrays on the same grid as ``affine`` (the input's);
    ``hu`` None leaves the HU keys null. ``body_x``: :func:`body_centre_x` of ``hu``, when the caller has it
    for several targets of one volume (computed here otherwise). Raises ValueError on mismatched shapes.
    """
    name = target if isinstance(target, str) else target.name
    for label, array in (("variance", variance), ("hu", hu)):
        if array is not None and array.shape != mean.shape:
            raise ValueError(f"{name}: {label} shape {array.shape} differs from the mean's {mean.shape}")
    mask = np.asarray(mean) > MASK_THRESHOLD
    voxel_ml = _voxel_ml(affine)
    box = _box(mask)
    entry: dict[str, Any] = {"voxel_count": 0, "volume_ml": 0.0}
    quality: dict[str, Any] = {"pairwise_dice": None, "high_variance_share": None, "volume_cv": None}
    if box is None:
        entry.update(hu_mean=None, hu_sd=None, bbox_ras_mm=None, bbox_lps_mm=None, axial_extent_mm=None,
                     midline_offset_mm=None, connected_components=0, touches_edge=False, edges_touched=[])
    else:
        crop = mask[box]
        count = int(crop.sum())
        lo, hi = _bbox_ras(crop, box, affine)
        lps_lo = np.array([-hi[0], -hi[1], lo[2]])
        lps_hi = np.array([-lo[0], -lo[1], hi[2]])
        _, components = ndimage.label(crop, structure=_FULL_CONNECTIVITY)
        edges = _edges_touched(mask, affine)
        hu_mean = hu_sd = offset = None
        if hu is not None:
            inside = np.asarray(hu[box], np.float64)[crop]
            hu_mean, hu_sd = float(inside.mean()), float(inside.std())
            body_x = body_centre_x(hu, affine) if body_x is None else body_x
            offset = None if body_x is None else _midline_offset_mm(mask, box, affine, body_x)
        entry.update(
            voxel_count=count,
            volume_ml=_round(count * voxel_ml, 3),
            hu_mean=_round(hu_mean, 1),
            hu_sd=_round(hu_sd, 1),
            bbox_ras_mm={"min": [_round(v, 1) for v in lo], "max": [_round(v, 1) for v in hi]},
            bbox_lps_mm={"min": [_round(v, 1) for v in lps_lo], "max": [_round(v, 1) for v in lps_hi]},
            axial_extent_mm=_round(float(hi[2] - lo[2]), 1),
            midline_offset_mm=_round(offset, 1),
            connected_components=int(components),
            touches_edge=bool(edges),
            edges_touched=edges,
        )
        if variance is not None:
            quality["high_variance_share"] = _round(float((np.asarray(variance[box])[crop] > policy.high_variance).mean()), 4)
    ensemble = _ensemble_volumes(members)
    entry["ensemble_volume_ml"] = ensemble
    if members is not None:
        quality["pairwise_dice"] = _round(members.pairwise_dice(), 4)
        if ensemble is not None and ensemble["members"] > 1 and ensemble["mean"]:
            quality["volume_cv"] = _round(ensemble["sd"] / ensemble["mean"], 4)
    entry["quality"] = quality
    prior = size_prior(name) if policy.size_priors else None
    entry["typical_volume_ml"] = None if prior is None else [prior.low_ml, prior.high_ml]
    reasons = review_reasons(entry, prior, policy, usual_side(name))
    entry["needs_review"] = bool(reasons)
    entry["review_reason"] = "; ".join(reasons) or None
    return entry


def above_typical_volume(target: str, volume_ml: float | None) -> bool:
    """True when ``volume_ml`` exceeds the target's typical adult range (no range, no volume: False)."""
    prior = size_prior(target)
    return prior is not None and volume_ml is not None and volume_ml > prior.high_ml


def review_reasons(
    entry: Mapping[str, Any], prior: SizePrior | None, policy: ReviewPolicy, side: str | None = None
) -> list[str]:
    """Why one target's entry needs a human look (empty: it does not). ``side``: where the organ belongs
    (:func:`model.targets.vocabulary.usual_side`); a mask whose centre lies over :data:`SIDE_MARGIN_MM` on the
    other side of the body's centre is flagged (a mask on the wrong organ, or a header that mirrors the patient)."""
    reasons = []
    volume = float(entry["volume_ml"])
    if entry["voxel_count"] == 0:
        reasons.append("empty mask")
    elif prior is not None and volume < prior.low_ml and not entry["touches_edge"]:
        reasons.append(f"{volume:.0f} ml is below the typical {prior.low_ml:g}-{prior.high_ml:g} ml")
    elif prior is not None and volume > prior.high_ml:
        reasons.append(f"{volume:.0f} ml is above the typical {prior.low_ml:g}-{prior.high_ml:g} ml "
                       "(an enlarged organ, or a mask spilled onto its neighbours)")
    offset = entry.get("midline_offset_mm")
    if on_wrong_side(side, offset):
        reasons.append(f"its centre lies {abs(offset):.0f} mm to the patient's {'right' if offset > 0 else 'left'} of "
                       f"the body's, where it belongs on the {side} (a mask on the wrong organ, or a scan whose "
                       "header mirrors the patient)")
    dice = entry["quality"]["pairwise_dice"]
    if dice is not None and entry["voxel_count"] > 0 and dice < policy.min_pairwise_dice:
        reasons.append(f"ensemble members disagree (pairwise Dice {dice:.2f} < {policy.min_pairwise_dice:g})")
    return reasons


def job_statistics(
    targets: Mapping[str, dict[str, Any]],
    affine: np.ndarray,
    shape: Sequence[int],
    *,
    policy: ReviewPolicy = ReviewPolicy(),
    ensemble: int | None = None,
) -> dict[str, Any]:
    """The whole ``statistics.json`` document from per-target entries (:func:`target_statistics`)."""
    affine = np.asarray(affine, np.float64)
    return {
        "schema_version": SCHEMA_VERSION,
        "mask": f"mean > {MASK_THRESHOLD:g}",
        "grid": {
            "shape": [int(s) for s in shape],
            "voxel_size_mm": [_round(float(s), 4) for s in np.linalg.norm(affine[:3, :3], axis=0)],
            "voxel_ml": _round(_voxel_ml(affine), 6),
        },
        "ensemble": ensemble,
        "review_policy": {
            "min_pairwise_dice": policy.min_pairwise_dice,
            "high_variance": policy.high_variance,
            "size_priors": policy.size_priors,
        },
        "units": dict(UNITS),
        "targets": dict(targets),
    }


def write_statistics(document: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return path


def read_statistics(path: str | Path) -> dict[str, Any]:
    """Read a ``statistics.json`` (ValueError when it is not one)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a statistics file ({exc})") from exc
    if not isinstance(document, dict) or "targets" not in document or "schema_version" not in document:
        raise ValueError(f"{path}: not a statistics file (no schema_version/targets)")
    return document


def summary_line(document: Mapping[str, Any]) -> str:
    """One line per job: ``liver 1523 ml (±12), spleen 210 ml (±4) REVIEW: pancreas (empty mask)``."""
    parts, review = [], []
    for name, entry in document.get("targets", {}).items():
        spread = entry.get("ensemble_volume_ml") or {}
        sd = spread.get("sd")
        parts.append(f"{name} {entry['volume_ml']:.0f} ml" + (f" (±{sd:.0f})" if sd else ""))
        if entry.get("needs_review"):
            review.append(f"{name} ({entry.get('review_reason')})")
    line = ", ".join(parts)
    if review:
        line += " REVIEW: " + "; ".join(review)
    return line


class StatisticsWriter:
    """Collects per-target entries while the maps are streamed out, then writes the document."""

    def __init__(self, affine: np.ndarray, shape: Sequence[int], hu: np.ndarray | None, *,
                 policy: ReviewPolicy = ReviewPolicy(), ensemble: int | None = None) -> None:
        self.affine = np.asarray(affine, np.float64)
        self.shape = tuple(int(s) for s in shape)
        self.hu = hu
        self.policy = policy
        self.ensemble = ensemble
        self.targets: dict[str, dict[str, Any]] = {}
        self.body_x = None if hu is None else body_centre_x(hu, self.affine)  # once per job, not per target

    def add(self, target: Target, mean: np.ndarray, variance: np.ndarray | None, members: MemberSummary | None) -> None:
        self.targets[target.name] = target_statistics(target, mean, variance, self.hu, self.affine, members, self.policy,
                                                      self.body_x)

    def document(self) -> dict[str, Any]:
        return job_statistics(self.targets, self.affine, self.shape, policy=self.policy, ensemble=self.ensemble)

    def write(self, out_dir: str | Path) -> Path:
        return write_statistics(self.document(), Path(out_dir) / STATISTICS_FILE)
