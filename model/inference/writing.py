"""Inference results to files: ``{target}_mean.nii.gz``, ``{target}_variance.nii.gz``, ``labels.nii.gz``,
``labels.json`` and ``statistics.json``.

:func:`write_prediction` streams a model-grid prediction (resampled and written one map at a
time, gzip on writer threads); :func:`write_segmentation` writes an in-memory
:class:`model.inference.pipeline.Segmentation`. DICOM outputs are in :mod:`model.io`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import torch

from model.inference.progress import SAMPLING_SHARE, Progress, report
from model.inference.statistics import ReviewPolicy, StatisticsWriter
from model.targets.vocabulary import Target

if TYPE_CHECKING:
    from model.inference.pipeline import ModelGridPrediction, Segmentation


class LabelAccumulator:
    """Running argmax over targets, one map at a time (first target wins ties, as ``argmax``)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.best = np.full(shape, -np.inf, np.float32, order="F")  # the maps' (NIfTI) voxel order
        self.ids = np.zeros(shape, np.uint8, order="F")

    def add(self, target_id: int, mean: np.ndarray) -> None:
        better = mean > self.best
        np.copyto(self.best, mean, where=better)
        self.ids[better] = target_id

    def result(self, threshold: float) -> np.ndarray:
        return np.where(self.best > threshold, self.ids, np.uint8(0)).astype(np.uint8, order="F")


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI; ``.nii.gz`` goes through ISA-L's gzip (``isal``, about 5-20× faster than
    zlib at the same ratio, same file format) when it is installed, else through nibabel's zlib."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = Path(path)
    if path.name.endswith(".gz"):
        try:
            from isal import igzip
        except ImportError:
            igzip = None
        if igzip is not None:
            with igzip.open(path, "wb", compresslevel=1) as handle:
                img.to_file_map({"image": nib.FileHolder(filename=str(path), fileobj=handle)})
            return
    nib.save(img, str(path))


def write_legend(targets: Sequence[Target], out_dir: Path) -> Path:
    legend = out_dir / "labels.json"
    legend.write_text(json.dumps({str(t.id): t.name for t in targets}, indent=2) + "\n")
    return legend


def write_segmentation(result: Segmentation, out_dir: Path) -> list[Path]:
    """Write the result files into ``out_dir`` and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for target in result.targets:
        for kind, maps in (("mean", result.mean), ("variance", result.variance)):
            path = out_dir / f"{target.name}_{kind}.nii.gz"
            save_nifti(maps[target.name].astype(np.float32, copy=False), result.affine, path)
            written.append(path)
    labels_path = out_dir / "labels.nii.gz"
    save_nifti(result.labels(), result.affine, labels_path)
    written.append(labels_path)
    written.append(write_legend(result.targets, out_dir))
    return written


def write_prediction(
    prediction: ModelGridPrediction,
    out_dir: Path,
    progress: Progress | None = None,
    threshold: float = 0.5,
    *,
    hu: np.ndarray | None = None,
    statistics: bool = True,
    review: ReviewPolicy = ReviewPolicy(),
) -> list[Path]:
    """Resample and write one map at a time: the same files as ``write_segmentation(segment_volume(...))``
    with one full-resolution map (plus the label accumulator) in memory at a time.

    With ``statistics`` (the default) also ``statistics.json`` (:mod:`model.inference.statistics`), computed
    from each map while it is in memory; ``hu`` is the input volume's HU on its own grid (None
    leaves the HU keys null)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    affine = prediction.source_affine
    labels = LabelAccumulator(prediction.source_shape)
    ensemble = None if prediction.member_voxels is None else int(prediction.member_voxels.shape[1])
    stats = StatisticsWriter(affine, prediction.source_shape, hu, policy=review, ensemble=ensemble) if statistics else None
    written: list[Path] = []
    # gzip is single-threaded and releases the GIL: compress files on writer threads while the
    # next map is resampled, with at most ``writers`` maps waiting to be written.
    writers = max(1, torch.get_num_threads())
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="nifti-writer") as pool:

        def save(array: np.ndarray, path: Path) -> None:
            while len(pending) >= writers:
                pending.popleft().result()
            pending.append(pool.submit(save_nifti, array, affine, path))
            written.append(path)

        for index, target in enumerate(prediction.targets):
            mean = prediction.mean_on_source(index)
            labels.add(target.id, mean)
            save(mean, out_dir / f"{target.name}_mean.nii.gz")
            variance = prediction.variance_on_source(index)
            if stats is not None:
                stats.add(target, mean, variance, prediction.members(index))
            del mean
            save(variance, out_dir / f"{target.name}_variance.nii.gz")
            del variance
            # the last share is the label map, legend and statistics: 100 % only once all is written
            report(progress, SAMPLING_SHARE + (1 - SAMPLING_SHARE) * (index + 1) / (len(prediction.targets) + 1))
        save(labels.result(threshold), out_dir / "labels.nii.gz")
        del labels
        while pending:
            pending.popleft().result()
    written.append(write_legend(prediction.targets, out_dir))
    if stats is not None:
        written.append(stats.write(out_dir))
    report(progress, 1.0)
    return written
