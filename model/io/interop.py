"""DICOM-SEG and preview outputs next to results already written by the pipeline.

:func:`model.inference.pipeline.segment_file` / :func:`model.inference.pipeline.write_prediction` stream the NIfTI
outputs (``{target}_mean.nii.gz``, ``{target}_variance.nii.gz``, ``labels.nii.gz``) one map at
a time. :func:`write_interop_outputs` reads those files back and adds, on request:

- ``segmentation.dcm`` (:mod:`model.io.dicom_seg`): BINARY from the label map, or FRACTIONAL from
  the means; it references the input series (DICOM input) or a derived CT series written
  beside it (``dicom_ct/`` or ``dicom_ct.zip``, NIfTI input);
- ``preview.png`` (:mod:`model.io.preview`).

Reading the written files back (rather than keeping every map in memory during sampling) makes
the SEG agree with ``labels.nii.gz`` by construction, and gives the CLI and a worker one call
to make after the pipeline has run. It holds every target's mean and variance in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from model.targets.vocabulary import Target

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from model.inference.pipeline import Segmentation
    from model.inference.preprocessing import Volume

__all__ = ["InteropRequest", "PREVIEW_FILENAME", "read_written_segmentation", "write_interop_outputs"]

PREVIEW_FILENAME = "preview.png"


@dataclass(frozen=True)
class InteropRequest:
    """Which extra outputs to write (all off: nothing is read or written)."""

    dicom_seg: bool = False
    fractional: bool = False  # implies dicom_seg
    preview: bool = False
    derived_ct_as_zip: bool = False  # NIfTI input: dicom_ct.zip instead of dicom_ct/ (flat result listings)

    @property
    def any(self) -> bool:
        return self.dicom_seg or self.fractional or self.preview


def read_written_segmentation(out_dir: Path, targets: Sequence[Target]) -> Segmentation:
    """The per-target mean and variance maps written into ``out_dir``, as a Segmentation."""
    from model.inference.pipeline import Segmentation

    out_dir = Path(out_dir)
    means: dict[str, np.ndarray] = {}
    variances: dict[str, np.ndarray] = {}
    affine: np.ndarray | None = None
    for target in targets:
        mean_img = nib.load(str(out_dir / f"{target.name}_mean.nii.gz"))
        means[target.name] = np.asarray(mean_img.dataobj, dtype=np.float32)
        variances[target.name] = np.asarray(nib.load(str(out_dir / f"{target.name}_variance.nii.gz")).dataobj,
                                            dtype=np.float32)
        affine = np.asarray(mean_img.affine, dtype=np.float64) if affine is None else affine
    if affine is None:
        raise ValueError("no targets: nothing to read")
    return Segmentation(targets=tuple(targets), mean=means, variance=variances, affine=affine)


def write_interop_outputs(
    out_dir: Path,
    volume: Volume,
    targets: Sequence[Target],
    request: InteropRequest,
    *,
    source_images: Sequence[Dataset] | None,
    bundle_name: str,
    bundle_version: str,
    parameters: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write the requested extras for the results in ``out_dir``; returns the written paths.

    ``volume`` is the input on its own grid (the grid of the results); ``source_images`` are
    the DICOM input's headers (None for NIfTI input).
    """
    if not request.any:
        return []
    out_dir = Path(out_dir)
    result = read_written_segmentation(out_dir, targets)
    written: list[Path] = []
    if request.dicom_seg or request.fractional:
        from model.io.dicom_seg import write_dicom_seg

        written += write_dicom_seg(
            result, out_dir, volume=volume, source_images=source_images, bundle_name=bundle_name,
            bundle_version=bundle_version, fractional=request.fractional, parameters=parameters,
            derived_ct_as_zip=request.derived_ct_as_zip,
        )
    if request.preview:
        from model.io.preview import write_preview

        written.append(write_preview(out_dir / PREVIEW_FILENAME, volume, result))
    return written
