"""Turn the shared MSD spleen case (``../shared/data/msd-spleen8``) into a plain dataset folder, with its
left-right axis corrected and five organs labelled.

    .venv/bin/python scripts/msd_spleen8_dataset.py [--source ../shared/data/msd-spleen8] --out runs/real/data/spleen8k

What it fixes and adds (sessions 20-21; docs/model_card/real_notes.md):

* **Left and right.** The redistributed ``spleen_8_image.nii.gz`` says LAS, but read that way the liver, the
  heart and the gastric fundus lie on the patient's left and the spleen (the manual label) on the right: the
  whole patient is mirrored, which situs inversus would explain but a header flipped on redistribution far more
  likely does. Every bundle up to v0.9.0 trained on it mirrored. Both files are flipped along their first axis
  (the header is kept), so the spleen lands on the patient's left, where ``training.data.laterality_problems``
  expects it.
* **Annotation by eye, for this project.** The file's 32 slices are 8 distinct ones 30 mm apart, each repeated 4
  times, and its pixels come in 4 x 4 blocks: about 3 x 3 x 30 mm of real resolution. On those 8 distinct slices
  (the tables below, on the 128 x 128 grid of distinct pixels) this script labels the left kidney (an ellipse per
  slice cut to soft tissue), the liver (its parenchyma's HU range inside a hand-drawn polygon), the aorta (a disc
  cut to enhanced blood) and the stomach (its oral-contrast content and a pixel of wall, on the two slices where
  it is unmistakable). Not expert ground truth: about a pixel (3 mm) of boundary uncertainty. The right kidney
  is *not* labelled: session 20 drew it, but no enhanced kidney can be told apart on the right of this patient
  (what it took for one is bowel with oral contrast beside the liver), so the target is left out of the case's
  label map and the case teaches nothing about it. Label values: 1 spleen (MSD, manual), 2 kidney_left,
  3 liver, 4 aorta, 5 stomach.

The derived labels stay under the source's licence (CC BY-SA 4.0, MSD Task09 / NVIDIA clara-train-examples): the
licence file is copied beside them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "msd-spleen8"
BLOCK = 4  # the file's in-plane pixels come in 4 x 4 blocks, its slices in runs of 4
NAME = "msd_task09_spleen8_annotated"
LABELS = {1: "spleen", 2: "kidney_left", 3: "liver", 4: "aorta", 5: "stomach"}
Region = tuple[tuple[float, float], ...]
# Everything below is in distinct pixels of a distinct slice (keyed by its index 0-7, 0 the lowest, 30 mm apart),
# x from the patient's right to left after the flip, y from posterior to anterior.
# kidney_left: one ellipse (centre x, centre y, radius x, radius y) per distinct slice that shows it.
KIDNEY_LEFT: dict[int, tuple[float, float, float, float]] = {
    0: (90, 55, 6.5, 7), 1: (89, 54, 10, 11), 2: (88, 55, 10, 9), 3: (84, 53, 11, 9)}
# liver: the parenchyma (median-filtered 95-230 HU, opened twice) inside a hand-drawn polygon, largest piece.
# Distinct slices 0 and 1 show no liver (the bright mass on the right there is colon full of oral contrast).
LIVER: dict[int, Region] = {
    2: ((4, 50), (32, 50), (32, 80), (4, 80)),                      # the tip of the right lobe
    3: ((4, 20), (44, 20), (44, 84), (4, 84)),                      # the right lobe, beside the duodenum
    4: ((4, 20), (72, 20), (72, 110), (4, 110)),                    # both lobes; the stomach lies beyond x 72
    5: ((4, 30), (56, 30), (56, 64), (72, 66), (74, 110), (4, 110)),  # both lobes, spine and aorta cut away
    6: ((4, 30), (60, 30), (60, 62), (64, 70), (64, 100), (4, 100)),  # below the heart
    7: ((4, 20), (50, 20), (50, 110), (4, 110)),                    # the dome, right of the heart
}
LIVER_HU = (95.0, 230.0)
# aorta: a disc (centre x, centre y, radius) around the vessel, cut to median-filtered HU > 120, largest piece.
AORTA: dict[int, tuple[float, float, float]] = {
    0: (64, 66, 3.5), 1: (64, 65, 3.5), 2: (62, 66, 3.5), 3: (62, 66, 3.5),
    4: (64, 61, 4.5), 5: (65, 59, 4.5), 6: (67, 57, 4.5), 7: (70, 53, 3.5)}
AORTA_HU = 120.0
# stomach: its oral-contrast content (median-filtered HU > 200) inside a polygon, largest piece, grown by one pixel
# of wall, on the two distinct slices where it is unmistakable (4 and 5). The other six teach "no stomach": 0-2 and 7
# lie below or above it, 6 shows the heart there; 3 may hold a sliver of the antrum (an accepted error).
STOMACH: dict[int, Region] = {
    4: ((70, 62), (96, 62), (96, 98), (70, 98)),
    5: ((72, 60), (96, 60), (96, 98), (72, 98)),
}
STOMACH_HU = 200.0
SOFT_TISSUE_HU = -20.0


class SourceError(ValueError):
    """The source folder is not the MSD spleen_8 case this script knows."""


def _polygon(points: Region, shape: tuple[int, int]) -> np.ndarray:
    """Grid cells whose centre lies inside the polygon (even-odd rule)."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    inside = np.zeros(shape, bool)
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1]):
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        inside ^= crosses & (x < (x2 - x1) * (y - y1) / (y2 - y1) + x1)
    return inside


def _largest(mask: np.ndarray) -> np.ndarray:
    pieces, n = ndi.label(mask)
    return pieces == (np.argmax(np.bincount(pieces.ravel())[1:]) + 1) if n else mask


def annotation(image: np.ndarray) -> np.ndarray:
    """The annotation of this project (values 2-5 of LABELS) on the flipped image's full grid."""
    if image.shape != (128 * BLOCK, 128 * BLOCK, 32):
        raise SourceError(f"expected the 512 x 512 x 32 spleen_8 image, got {image.shape}")
    distinct = image[::BLOCK, ::BLOCK, ::BLOCK]
    x, y = np.meshgrid(np.arange(distinct.shape[0]), np.arange(distinct.shape[1]), indexing="ij")
    out = np.zeros(distinct.shape, np.uint8)
    for z in range(distinct.shape[2]):
        hu = ndi.median_filter(distinct[:, :, z], 3)
        layer = out[:, :, z]
        if z in LIVER:
            tissue = ndi.binary_opening((hu > LIVER_HU[0]) & (hu < LIVER_HU[1]), iterations=2)
            layer[ndi.binary_fill_holes(_largest(tissue & _polygon(LIVER[z], hu.shape)))] = 3
        if z in STOMACH:
            region = _polygon(STOMACH[z], hu.shape)
            content = ndi.binary_fill_holes(_largest((hu > STOMACH_HU) & region))
            layer[ndi.binary_dilation(content) & region & (hu > SOFT_TISSUE_HU)] = 5
        if z in KIDNEY_LEFT:
            cx, cy, rx, ry = KIDNEY_LEFT[z]
            mask = (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1) & (hu > SOFT_TISSUE_HU)
            layer[ndi.binary_fill_holes(_largest(ndi.binary_opening(mask)))] = 2
        if z in AORTA:
            cx, cy, r = AORTA[z]
            layer[_largest(((x - cx) ** 2 + (y - cy) ** 2 <= r * r) & (hu > AORTA_HU))] = 4
    return np.repeat(np.repeat(np.repeat(out, BLOCK, axis=0), BLOCK, axis=1), BLOCK, axis=2)


def build(source: Path, out: Path) -> Path:
    """Write ``out/images/spleen_8.nii.gz``, ``out/labels/spleen_8.nii.gz``, ``labelmap.json``, licence, README."""
    image_path, label_path = source / "spleen_8_image.nii.gz", source / "spleen_8_label.nii.gz"
    for path in (image_path, label_path):
        if not path.is_file():
            raise SourceError(f"{path} is missing (expected the shared msd-spleen8 folder)")
    image_nii, label_nii = nib.load(str(image_path)), nib.load(str(label_path))
    image = np.asarray(image_nii.dataobj)[::-1].copy()
    spleen = np.asarray(label_nii.dataobj)[::-1].copy()
    if spleen.shape != image.shape:
        raise SourceError(f"label {spleen.shape} and image {image.shape} differ in shape")
    labels = annotation(image.astype(np.float32))
    labels[spleen == 1] = 1
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, image_nii.affine, image_nii.header), str(out / "images" / "spleen_8.nii.gz"))
    header = label_nii.header.copy()
    header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(labels, label_nii.affine, header), str(out / "labels" / "spleen_8.nii.gz"))
    (out / "labelmap.json").write_text(json.dumps({"name": NAME, "labels": {str(k): v for k, v in LABELS.items()}},
                                                  indent=1) + "\n")
    licence = source / "license.txt"
    if licence.is_file():
        shutil.copy(licence, out / "LICENSE.txt")
    (out / "README.md").write_text(
        "MSD Task09 spleen_8 (as redistributed in NVIDIA clara-train-examples), CC BY-SA 4.0 (LICENSE.txt).\n"
        "Made by latentseg's scripts/msd_spleen8_dataset.py: image and labels flipped left-right (the source's\n"
        "header mirrors the patient); label 1 spleen (MSD, manual); 2 kidney_left, 3 liver, 4 aorta and 5 stomach\n"
        "annotated by eye for latentseg on the case's 8 distinct slices (not expert ground truth).\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the shared msd-spleen8 folder")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write (plain layout)")
    args = parser.parse_args(argv)
    try:
        build(args.source, args.out)
    except SourceError as exc:
        sys.stderr.write(f"msd_spleen8_dataset: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
