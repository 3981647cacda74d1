"""Turn the shared MSD spleen case (``../shared/data/msd-spleen8``) into a plain dataset folder, with its
left-right axis corrected and both kidneys annotated.

    .venv/bin/python scripts/msd_spleen8_dataset.py [--source ../shared/data/msd-spleen8] --out runs/real/data/spleen8k

What it fixes and adds (session 20; docs/model_card/real_notes.md):

* **Left and right.** The redistributed ``spleen_8_image.nii.gz`` says LAS, but read that way the liver, the
  heart and the gastric fundus lie on the patient's left and the spleen (the manual label) on the right: the
  whole patient is mirrored, which situs inversus would explain but a header flipped on redistribution far more
  likely does. Every bundle up to v0.9.0 trained on it mirrored. Both files are flipped along their first axis
  (the header is kept), so the spleen lands on the patient's left, where ``training.data.laterality_problems``
  expects it.
* **Kidneys.** The case shows both kidneys, contrast-enhanced, on its lowest four distinct slices (the file's 32
  slices are 8 distinct ones, each repeated 4 times, and 4 x 4 pixel blocks in-plane: about 3 x 3 x 30 mm of real
  resolution). They were annotated by eye for this project as one ellipse per kidney and distinct slice (below, on
  the 128 x 128 grid of distinct pixels), cut to soft tissue (median-filtered HU > -20), holes filled, largest
  piece kept. Not expert ground truth: about a pixel (3 mm) of boundary uncertainty, and the right kidney's upper
  pole is left unlabelled on the fourth distinct slice (there it cannot be told from the liver), so that slice
  teaches "no right kidney". Label values: 1 spleen (MSD, manual), 2 kidney_right, 3 kidney_left.

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
NAME = "msd_task09_spleen_kidneys"
LABELS = {1: "spleen", 2: "kidney_right", 3: "kidney_left"}
# first file slice of a distinct slice -> {label: (centre x, centre y, radius x, radius y)} in distinct pixels
# (x from the patient's right to left after the flip, y from posterior to anterior)
KIDNEYS: dict[int, dict[int, tuple[float, float, float, float]]] = {
    0: {2: (37, 64, 7, 6), 3: (90, 55, 6.5, 7)},
    4: {2: (37, 58, 9, 11), 3: (89, 54, 10, 11)},
    8: {2: (41, 53, 8, 7), 3: (88, 55, 10, 9)},
    12: {3: (84, 53, 11, 9)},
}
SOFT_TISSUE_HU = -20.0


class SourceError(ValueError):
    """The source folder is not the MSD spleen_8 case this script knows."""


def kidney_labels(image: np.ndarray) -> np.ndarray:
    """The kidney annotation (values 2 and 3) on the flipped image's full grid."""
    if image.shape != (128 * BLOCK, 128 * BLOCK, 32):
        raise SourceError(f"expected the 512 x 512 x 32 spleen_8 image, got {image.shape}")
    distinct = image[::BLOCK, ::BLOCK, :]
    x, y = np.meshgrid(np.arange(distinct.shape[0]), np.arange(distinct.shape[1]), indexing="ij")
    out = np.zeros(distinct.shape, np.uint8)
    for z0, ellipses in KIDNEYS.items():
        tissue = ndi.median_filter(distinct[:, :, z0], 3) > SOFT_TISSUE_HU
        for value, (cx, cy, rx, ry) in ellipses.items():
            mask = (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1) & tissue
            mask = ndi.binary_fill_holes(ndi.binary_opening(mask))
            pieces, n = ndi.label(mask)
            if n:
                mask = pieces == (np.argmax(np.bincount(pieces.ravel())[1:]) + 1)
            out[:, :, z0:z0 + BLOCK][mask] = value
    return np.repeat(np.repeat(out, BLOCK, axis=0), BLOCK, axis=1)


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
    labels = kidney_labels(image.astype(np.float32))
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
        "header mirrors the patient); label 1 spleen (MSD, manual), 2 kidney_right and 3 kidney_left (annotated\n"
        "by eye for latentseg, one ellipse per kidney and distinct slice; not expert ground truth).\n")
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
