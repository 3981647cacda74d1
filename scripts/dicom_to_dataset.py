"""Turn a DICOM CT series and its reference segmentation into a case of a plain dataset folder, so that
``latentseg evaluate`` scores a bundle on it and ``latentseg train --data`` can learn from it.

    .venv/bin/python scripts/dicom_to_dataset.py SERIES --labels liver.dcm --case patient1 --out DATASET
    .venv/bin/python scripts/dicom_to_dataset.py SERIES --labels liver_seg.nrrd --label 1=liver --case patient1 --out DATASET

SERIES is a folder (or .zip) of one CT series, read as ``latentseg segment`` reads it (other objects in the
folder, such as the SEG itself, are skipped). ``--labels`` is either a DICOM-SEG of that series (each segment
becomes the vocabulary target that its tracking ID, or else its label, names) or a label map that SimpleITK
reads (NRRD, NIfTI, MHA) with ``--label VALUE=TARGET`` for each value. Either is resampled onto the series by
the positions it gives (nearest neighbour; never matched by slice index).

Writes ``DATASET/images/<case>.nii.gz`` (HU, float32 as read), ``DATASET/labels/<case>.nii.gz`` (uint8) and
``DATASET/labelmap.json``; a dataset folder that already holds other cases keeps them, and must agree on the
label values.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage


class DatasetInputError(ValueError):
    """The series, the segmentation or the dataset folder cannot be used; the message says why."""


def _target_names(pairs: Mapping[int, str | Sequence[str]]) -> dict[int, str]:
    """Label value -> vocabulary name, resolving names, display labels and synonyms (where a value has several
    candidate names, the first that resolves)."""
    from model.targets.vocabulary import default_vocabulary

    vocabulary = default_vocabulary()
    out: dict[int, str] = {}
    for value, texts in sorted(pairs.items()):
        candidates = [texts] if isinstance(texts, str) else [t for t in texts if t]
        text = " / ".join(repr(t) for t in candidates)
        if not 0 < value < 256:
            raise DatasetInputError(f"label value {value} ({text}): values must be 1..255")
        for candidate in candidates:
            try:
                out[value] = vocabulary.get(candidate).name
                break
            except ValueError:
                continue
        else:
            raise DatasetInputError(f"label {value}={text} is not a vocabulary target or synonym "
                                    f"(`latentseg targets` lists them)")
    if len(set(out.values())) != len(out):
        raise DatasetInputError(f"two label values name the same target: {out}")
    return out


def parse_label_pairs(items: Sequence[str]) -> dict[int, str]:
    """``["1=liver", "2=spleen"]`` -> {1: "liver", 2: "spleen"}."""
    pairs: dict[int, str] = {}
    for item in items:
        match = re.fullmatch(r"\s*(\d+)\s*=\s*(.+?)\s*", item)
        if match is None:
            raise DatasetInputError(f"--label {item!r}: expected VALUE=TARGET, e.g. 1=liver")
        pairs[int(match.group(1))] = match.group(2)
    return pairs


def _is_dicom_seg(path: Path) -> bool:
    import pydicom

    if not path.is_file():
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # not DICOM at all: a label map for SimpleITK
        return False
    return str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS


def seg_labels(seg_path: Path, affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, dict[int, tuple[str, ...]]]:
    """A DICOM-SEG resampled onto the series grid (``affine``: voxel -> RAS mm, ``shape``: I, J, K) by the
    positions its frames give, with value n for segment n; and segment number -> (tracking ID, label)."""
    import highdicom as hd
    import SimpleITK as sitk

    try:
        seg = hd.seg.segread(seg_path)
        volume = seg.get_volume(combine_segments=True)
    except (ValueError, RuntimeError) as exc:
        raise DatasetInputError(f"{seg_path.name}: cannot read the segmentation as a volume ({exc})") from exc
    names = {int(item.SegmentNumber): (str(getattr(item, "TrackingID", "")), str(item.SegmentLabel))
             for item in seg.SegmentSequence}
    array = np.asarray(volume.array)  # (slice, row, column) -> LPS by volume.affine
    axes = np.asarray(volume.affine, dtype=float)[:, [2, 1, 0, 3]]  # (column, row, slice): SimpleITK's x, y, z
    spacing = np.linalg.norm(axes[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.uint8)))
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (axes[:3, :3] / spacing).flatten()])
    image.SetOrigin([float(v) for v in axes[:3, 3]])
    return _resample(image, seg_path.name, affine, shape), names


def _resample(image: Any, name: str, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A SimpleITK label image resampled (nearest neighbour, by physical position) onto the grid of ``affine``
    (voxel -> RAS mm) and ``shape`` (I, J, K)."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetInputError(f"{name}: expected a 3-D single-channel label map")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    reference = sitk.Image([int(s) for s in shape], sitk.sitkUInt8)
    reference.SetSpacing([float(s) for s in spacing])
    reference.SetDirection([float(v) for v in (lps[:3, :3] / spacing).flatten()])
    reference.SetOrigin([float(v) for v in lps[:3, 3]])
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    values = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)  # (K, J, I) -> (I, J, K)
    if values.min() < 0 or values.max() > 255 or not np.all(values == np.round(values)):
        raise DatasetInputError(f"{name}: label values must be whole numbers 0..255")
    return values.astype(np.uint8)


def resampled_label_map(path: Path, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A label map SimpleITK reads (NRRD, NIfTI, MHA), resampled onto the series grid by :func:`_resample`."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DatasetInputError(f"{path.name}: not a label map SimpleITK can read ({str(exc).strip().splitlines()[-1]})") from exc
    return _resample(image, path.name, affine, shape)


def _merge_labelmap(folder: Path, name: str, labels: dict[int, str]) -> dict[str, Any]:
    path = folder / "labelmap.json"
    doc: dict[str, Any] = {"name": name, "labels": {}}
    if path.is_file():
        doc = json.loads(path.read_text())
    known = {int(k): v for k, v in doc.get("labels", {}).items()}
    for value, target in labels.items():
        if known.get(value, target) != target:
            raise DatasetInputError(f"{path}: label {value} is already {known[value]!r}, this case says {target!r}")
        known[value] = target
    doc["labels"] = {str(k): v for k, v in sorted(known.items())}
    return doc


def convert(series: Path, labels_path: Path, case: str, out: Path, label_pairs: Mapping[int, str] | None = None,
            dataset_name: str | None = None) -> tuple[Path, Path, dict[int, str]]:
    """Write ``out/images/<case>.nii.gz`` and ``out/labels/<case>.nii.gz`` and update ``out/labelmap.json``;
    returns the two paths and label value -> target (only the values present in the segmentation)."""
    import nibabel as nib

    from model.io.dicom_io import read_dicom_series

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", case):
        raise DatasetInputError(f"case name {case!r}: use letters, digits, '_', '-' and '.'")
    if not labels_path.exists():
        raise DatasetInputError(f"{labels_path}: no such file")
    ct = read_dicom_series(series)
    shape = tuple(int(s) for s in ct.volume.data.shape)
    if _is_dicom_seg(labels_path):
        if label_pairs:
            raise DatasetInputError("--label is for label maps; a DICOM-SEG names its own segments")
        volume, names = seg_labels(labels_path, ct.volume.affine, shape)  # type: ignore[arg-type]
        mapping = _target_names(names)
    else:
        if not label_pairs:
            raise DatasetInputError(f"{labels_path.name}: a label map needs --label VALUE=TARGET for each value")
        volume = resampled_label_map(labels_path, ct.volume.affine, shape)  # type: ignore[arg-type]
        mapping = _target_names(label_pairs)
    present = {int(v) for v in np.unique(volume) if v != 0}
    unnamed = sorted(present - set(mapping))
    if unnamed:
        raise DatasetInputError(f"{labels_path.name}: values {unnamed} are in the label map but not named by --label")
    if not present:
        raise DatasetInputError(f"{labels_path.name}: no labelled voxel lies on the series' slices")
    mapping = {v: t for v, t in mapping.items() if v in present}
    doc = _merge_labelmap(out, dataset_name or out.name, mapping)
    image_path, label_path = out / "images" / f"{case}.nii.gz", out / "labels" / f"{case}.nii.gz"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct.volume.data.astype(np.float32), ct.volume.affine), image_path)
    nib.save(nib.Nifti1Image(volume, ct.volume.affine), label_path)
    (out / "labelmap.json").write_text(json.dumps(doc, indent=2) + "\n")
    return image_path, label_path, mapping


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("series", type=Path, help="a DICOM CT series: a folder or a .zip")
    parser.add_argument("--labels", type=Path, required=True, help="a DICOM-SEG of the series, or a label map (NRRD, NIfTI, MHA)")
    parser.add_argument("--label", action="append", default=[], metavar="VALUE=TARGET",
                        help="for a label map: what a value is (repeatable), e.g. 1=liver")
    parser.add_argument("--case", required=True, help="the case name in the dataset")
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder (created or extended)")
    parser.add_argument("--name", default=None, help="the dataset's name in labelmap.json (default: the folder's name)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from model.errors import UserError

    try:
        image, label, mapping = convert(args.series, args.labels, args.case, args.out, parse_label_pairs(args.label), args.name)
    except (DatasetInputError, UserError) as exc:
        parser.exit(2, f"dicom_to_dataset: error: {exc}\n")
    sys.stdout.write(f"wrote {image} and {label} ({', '.join(f'{v}={t}' for v, t in mapping.items())})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
