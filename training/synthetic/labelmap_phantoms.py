"""Phantoms built from real label maps (the SynthSeg idea of Billot et al., with CT priors).

Geometric phantoms are cartoons; a real patient's label map (TotalSegmentator labels 117 structures)
is real anatomy. Each synthetic case here takes one real case and

1. warps image and label map together: a random 3-D affine (scale, rotation about S, shear,
   translation) and a smooth elastic field (MONAI ``Rand3DElasticd``; nearest neighbour for labels);
2. re-colours every labelled structure: its voxels keep their real texture around the structure's
   real mean HU (measured on this case), scaled by a random factor, and move to a new mean drawn
   around the real one; vessels and enhancing organs move together by a random *contrast phase*
   (arterial → portal → late: aorta brighter or darker relative to the veins, kidneys and spleen);
3. varies the acquisition: Gaussian noise, in-plane blur and a thicker slice (through-plane blur).

The output is a dataset folder in nnU-Net v2 layout with the source's label table, so the trainer maps
it exactly as it maps the source (``totalsegmentator_v2`` for TotalSegmentator labels) and partial
labels stay partial. Never build phantoms from a patient you validate on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

log = logging.getLogger(__name__)

# TotalSegmentator v2 ids whose contrast follows the injection phase (arterial structures, veins,
# enhancing parenchyma). Used only when the source is a TotalSegmentator label map.
ARTERIAL = (52, 65, 66)  # aorta, iliac arteries
VENOUS = (63, 64, 67, 68)  # IVC, portal/splenic vein, iliac veins
ENHANCING = (1, 2, 3, 5, 7)  # spleen, kidneys, liver, pancreas


@dataclass(frozen=True)
class LabelmapPhantomSpec:
    rotate_degrees: float = 10.0
    scale: tuple[float, float] = (0.85, 1.15)
    elastic_sigma: tuple[float, float] = (6.0, 9.0)  # voxels
    elastic_magnitude: tuple[float, float] = (2.0, 6.0)  # voxels
    texture_scale: tuple[float, float] = (0.6, 1.4)
    mean_shift_hu: float = 25.0  # SD of each structure's new mean around its real one
    phase_shift_hu: float = 60.0  # SD of the shared contrast-phase shift (arterial up = venous down)
    noise_hu: tuple[float, float] = (0.0, 25.0)
    blur_sigma: tuple[float, float] = (0.0, 1.0)  # voxels, in-plane
    thick_slice_prob: float = 0.3


def _warp(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, spec: LabelmapPhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    from monai.transforms import Compose, Rand3DElasticd, RandAffined

    rot = np.deg2rad(spec.rotate_degrees)
    lo, hi = spec.scale
    transform = Compose([
        RandAffined(keys=("image", "label"), prob=1.0, rotate_range=(0.0, 0.0, rot),
                    scale_range=((lo - 1, hi - 1),) * 3, shear_range=(0.05, 0.05, 0.05, 0.05, 0.0, 0.0),
                    translate_range=(8, 8, 4), mode=("bilinear", "nearest"), padding_mode="border"),
        Rand3DElasticd(keys=("image", "label"), sigma_range=spec.elastic_sigma, magnitude_range=spec.elastic_magnitude,
                       prob=1.0, mode=("bilinear", "nearest"), padding_mode="border"),
    ])
    transform.set_random_state(seed=int(rng.integers(2**31)))
    out = transform({"image": torch.from_numpy(image[None].astype(np.float32)),
                     "label": torch.from_numpy(label[None].astype(np.float32))})
    return (np.asarray(out["image"])[0].astype(np.float32), np.rint(np.asarray(out["label"])[0]).astype(np.int32))


def _recolour(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, spec: LabelmapPhantomSpec,
              totalsegmentator: bool) -> np.ndarray:
    out = image.copy()
    phase = float(rng.normal(0.0, spec.phase_shift_hu))
    for value in np.unique(label):
        if value == 0:
            continue
        voxels = label == value
        real = out[voxels]
        mean = float(real.mean())
        shift = float(rng.normal(0.0, spec.mean_shift_hu))
        if totalsegmentator:
            if value in ARTERIAL:
                shift += phase
            elif value in VENOUS:
                shift -= 0.5 * phase
            elif value in ENHANCING:
                shift -= 0.25 * phase
        texture = float(rng.uniform(*spec.texture_scale))
        out[voxels] = (real - mean) * texture + mean + shift
    return out


def _acquire(image: np.ndarray, rng: np.random.Generator, spec: LabelmapPhantomSpec) -> np.ndarray:
    from scipy import ndimage

    sigma = float(rng.uniform(*spec.blur_sigma))
    thick = rng.random() < spec.thick_slice_prob
    if sigma > 0.05 or thick:
        image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 1.0 if thick else 0.0))
    noise = float(rng.uniform(*spec.noise_hu))
    return image + rng.normal(0.0, noise, image.shape).astype(np.float32) if noise > 0 else image


def synthesise(image: np.ndarray, label: np.ndarray, seed: int, spec: LabelmapPhantomSpec = LabelmapPhantomSpec(),
               *, totalsegmentator: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (HU image int16, label map uint8) pair from a real pair on the same grid."""
    rng = np.random.default_rng(seed)
    warped, warped_label = _warp(image, label, rng, spec)
    coloured = _recolour(warped, warped_label, rng, spec, totalsegmentator)
    final = _acquire(coloured, rng, spec)
    return np.clip(np.rint(final), -1024, 3071).astype(np.int16), warped_label.astype(np.uint8)


def write_labelmap_phantoms(
    source: Path, out: Path, per_case: int, seed: int, *, exclude: Sequence[str] = (),
    spec: LabelmapPhantomSpec = LabelmapPhantomSpec(), on_case: Callable[[int, Path], None] | None = None,
) -> Path:
    """``per_case`` synthetic cases from every case of the nnU-Net v2 folder ``source`` (but ``exclude``)."""
    meta = json.loads((source / "dataset.json").read_text())
    labels = sorted((source / "labelsTr").glob("*.nii.gz"))
    cases = [p.name[: -len(".nii.gz")] for p in labels if p.name[: -len(".nii.gz")] not in set(exclude)]
    unknown = sorted(set(exclude) - {p.name[: -len(".nii.gz")] for p in labels})
    if unknown:
        raise ValueError(f"{source}: no case named {', '.join(unknown)}")
    if not cases:
        raise ValueError(f"{source}: no case left to build phantoms from")
    totalsegmentator = meta.get("labels", {}).get("kidney_right") == 2 and meta.get("labels", {}).get("aorta") == 52
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    written = 0
    for case_index, case in enumerate(cases):
        image_nii = nib.load(str(source / "imagesTr" / f"{case}_0000.nii.gz"))
        label_nii = nib.load(str(source / "labelsTr" / f"{case}.nii.gz"))
        image = np.asarray(image_nii.dataobj, dtype=np.float32)
        label = np.asarray(label_nii.dataobj).astype(np.int32)
        for k in range(per_case):
            synth, synth_label = synthesise(image, label, seed * 100_003 + case_index * 1009 + k, spec,
                                            totalsegmentator=totalsegmentator)
            name = f"synth_{case}_{seed}_{k:03d}"
            nib.save(nib.Nifti1Image(synth, image_nii.affine), str(out / "imagesTr" / f"{name}_0000.nii.gz"))
            nib.save(nib.Nifti1Image(synth_label, label_nii.affine), str(out / "labelsTr" / f"{name}.nii.gz"))
            written += 1
            if on_case is not None:
                on_case(written, out / "imagesTr" / f"{name}_0000.nii.gz")
    dataset = {**meta, "numTraining": written,
               "description": f"label-map phantoms (latentseg training.synthetic.labelmap_phantoms) from {source.name}: "
                              f"cases {', '.join(cases)}, seed {seed}; the source's licence applies"}
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
    for licence in ("LICENSE.txt", "LICENSE", "license.txt"):
        if (source / licence).is_file():
            (out / licence).write_text((source / licence).read_text())
    return out
