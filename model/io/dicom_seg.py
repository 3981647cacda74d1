"""DICOM-SEG output (highdicom): one Segmentation instance per job, one segment per target.

Segments
    Segment ``n`` is ``result.targets[n - 1]``. Its label is the target's display name, its
    TrackingID the vocabulary name (so a reader can map segments back to latentseg targets),
    its property category/type the vocabulary's SNOMED CT codes, and, for a target with a
    ``side``, the laterality (SCT Left 7771000 / Right 24028007) is a
    SegmentedPropertyTypeModifierCodeSequence on the type, as dcmqi and TotalSegmentator do.
    Targets the vocabulary has no SNOMED code for get a private code
    (scheme ``99LATENTSEG``, value = the vocabulary name). Algorithm identification: name
    "latentseg", family DCM "Artificial Intelligence", version = the bundle's version, and
    the bundle's name (plus any sampling parameters) as parameters. The recommended display
    colour is the target's colour in the preview picture.

Contents
    ``BINARY`` (default): segment ``n`` is ``labels == target.id`` with
    :meth:`model.inference.pipeline.Segmentation.labels` (argmax over targets where the mean exceeds
    0.5), so the SEG and ``labels.nii.gz`` agree voxel by voxel and segments never overlap.
    ``FRACTIONAL``: the mean probability, quantised to 0..255 (PROBABILITY), RLE Lossless
    (encoded by pylibjpeg-rle, a dependency: pydicom's pure-Python RLE encoder took 0.35 s per
    512x512 frame, minutes for a whole CT).
    Frames with nothing in them are omitted (highdicom's default), as the standard allows; a
    fractional frame is empty when every probability rounds to 0/255.

Source images
    A SEG must reference the images it was derived from. For DICOM input these are the input
    series' headers (:class:`model.io.dicom_io.DicomSeries`), and frame ``k`` is source slice
    ``k`` in geometric order. For NIfTI input, :func:`derive_ct_series` first builds a CT
    series on the volume's own grid (int16 HU, new study, patient "Anonymous"), which is
    written beside the SEG so viewers can load both; a SEG referencing images nobody has
    would be unusable. A NIfTI whose affine is sheared (axes not orthogonal) cannot be
    represented as DICOM slices and is refused.

Uncertainty (what a radiologist's viewer can show beside the mask)
    With the full result (means and variances, not only a label map) :func:`write_dicom_seg`
    also writes, beside a BINARY ``segmentation.dcm``, ``probability.dcm``: the same targets as
    a FRACTIONAL SEG of the mean (skipped when ``segmentation.dcm`` is itself FRACTIONAL), and
    for every target ``{target}_variance.dcm``: a Parametric Map (:func:`build_variance_map`)
    of the ensemble variance, 16-bit unsigned pixel data, RLE Lossless, with a real-world value
    mapping (stored 0..65535 -> 0..max variance, UCUM unit "1": a variance of probabilities has
    no unit; quantity UMLS C1711260 "Variance"). All of them reference the same source series and
    share its frame of reference, so a viewer overlays them on the CT. Float pixel data would be
    exact but admits no compressed transfer syntax (1 MiB per 512x512 slice and target); the
    16-bit map is within max/65535 of the NIfTI variance and measured 7.6x smaller
    (benchmarks/dicom_uncertainty.py).

The segmentation must be on the source grid: the shape and the affine are checked.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.metadata
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from model.errors import InputError
from model.io.preview import target_colour
from model.targets.vocabulary import Code, Target

if TYPE_CHECKING:
    from model.inference.pipeline import Segmentation

__all__ = [
    "DERIVED_CT_DIRNAME",
    "DERIVED_CT_ZIPNAME",
    "LabelMap",
    "PROBABILITY_SEG_FILENAME",
    "PRIVATE_SCHEME",
    "VolumeLike",
    "SEG_FILENAME",
    "build_dicom_seg",
    "build_variance_map",
    "derive_ct_series",
    "property_type_code",
    "variance_map_filename",
    "write_derived_ct_series",
    "write_dicom_seg",
]

log = logging.getLogger(__name__)

PRIVATE_SCHEME = "99LATENTSEG"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SEG_SERIES_NUMBER = 9001
PROBABILITY_SEG_SERIES_NUMBER = 9002
VARIANCE_SERIES_NUMBER = 9003
VARIANCE_LEVELS = 65535  # the variance map's stored range: 0..max in 16 bits
# UMLS "Variance" (CID 7464), the quantity a variance map's real-world values measure.
VARIANCE_QUANTITY = Code("C1711260", "UMLS", "Variance")
DERIVED_CT_SERIES_NUMBER = 9000
_GEOMETRY_TOL = 1e-3
MAX_FRACTIONAL_VALUE = 255


def _software_version() -> str:
    try:
        return importlib.metadata.version("latentseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def property_type_code(target: Target) -> Code:
    """The vocabulary's SNOMED CT type of ``target``, or the private code when it has none."""
    return target.code if target.code is not None else Code(target.name, PRIVATE_SCHEME, target.display)


def _segment_descriptions(
    targets: Sequence[Target], algorithm: hd.AlgorithmIdentificationSequence
) -> list[hd.seg.SegmentDescription]:
    descriptions = []
    for number, target in enumerate(targets, start=1):
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=target.display,
            segmented_property_category=_coded(target.category),
            segmented_property_type=_coded(property_type_code(target)),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=target.name,
            display_color=hd.color.CIELabColor.from_rgb(*target_colour(number - 1)),
        )
        # highdicom has no parameter for the modifier: add it to the type item it wrote.
        if target.laterality is not None:
            item = description.SegmentedPropertyTypeCodeSequence[0]
            item.SegmentedPropertyTypeModifierCodeSequence = [_coded(target.laterality)]
        descriptions.append(description)
    return descriptions


def _clean_sources(source_images: Sequence[Dataset]) -> list[Dataset]:
    """Copies highdicom accepts: an empty SpecificCharacterSet (seen in real series) means the default."""
    cleaned = []
    for ds in source_images:
        ds = copy.deepcopy(ds)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
        cleaned.append(ds)
    return cleaned


def _source_geometry(headers: Sequence[Dataset]) -> tuple[tuple[int, int, int], np.ndarray]:
    """(I, J, K) shape and RAS affine of single-frame source images in the given (geometric) order."""
    first, last = headers[0], headers[-1]
    orientation = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    p0 = np.asarray([float(v) for v in first.ImagePositionPatient])
    p1 = np.asarray([float(v) for v in last.ImagePositionPatient])
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * col_spacing
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = (p1 - p0) / max(1, len(headers) - 1)
    lps[:3, 3] = p0
    return (int(first.Columns), int(first.Rows), len(headers)), LPS_FROM_RAS @ lps


@runtime_checkable
class _HasMeans(Protocol):
    targets: tuple[Target, ...]
    affine: np.ndarray
    mean: Mapping[str, np.ndarray]

    def labels(self) -> np.ndarray: ...


@dataclass(frozen=True)
class LabelMap:
    """A written label map and its targets: enough for a BINARY SEG, torch-free (the API uses it)."""

    targets: tuple[Target, ...]
    array: np.ndarray  # (I, J, K) uint8 vocabulary ids, as labels.nii.gz
    affine: np.ndarray

    def labels(self) -> np.ndarray:
        return self.array


class VolumeLike(Protocol):
    """What :func:`derive_ct_series` reads: :class:`model.inference.preprocessing.Volume` or any (data, affine) pair."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]: ...


def _check_on_source_grid(result_shape: tuple[int, ...], result_affine: np.ndarray, source_images: Sequence[Dataset]) -> None:
    shape, affine = _source_geometry(source_images)
    if tuple(result_shape) != shape:
        raise ValueError(f"the segmentation has shape {tuple(result_shape)}, the source series {shape}")
    if len(source_images) > 1 and not np.allclose(result_affine, affine, atol=1e-2, rtol=1e-4):
        raise ValueError(
            "the segmentation's affine does not match the source series' geometry:\n"
            f"{np.round(result_affine, 4)}\nvs\n{np.round(affine, 4)}"
        )


def build_dicom_seg(
    result: Segmentation | LabelMap,
    source_images: Sequence[Dataset],
    *,
    bundle_name: str,
    bundle_version: str,
    fractional: bool = False,
    parameters: Mapping[str, str] | None = None,
    series_number: int = SEG_SERIES_NUMBER,
) -> hd.seg.Segmentation:
    """A SEG of ``result`` referencing ``source_images`` (single-frame, in geometric order).

    ``result`` must lie on the source grid (the same (I, J, K) shape and affine); frame ``k``
    of every segment is ``mask[:, :, k].T`` (rows = J, columns = I).
    """
    if not result.targets:
        raise ValueError("a segmentation with no targets has nothing to encode")
    if len(source_images) < 1:
        raise ValueError("a DICOM-SEG needs its source images")
    if fractional and not isinstance(result, _HasMeans):
        raise ValueError("a FRACTIONAL SEG needs the mean maps, not only a label map")
    labels = None if fractional else result.labels()
    result_shape = labels.shape if labels is not None else result.mean[result.targets[0].name].shape  # type: ignore[union-attr]
    _check_on_source_grid(result_shape, result.affine, source_images)

    if fractional:
        # Quantise as highdicom will (255 steps), so frames that store only zeros are recognised as empty.
        stack = np.stack([np.clip(result.mean[t.name], 0.0, 1.0) for t in result.targets], axis=-1)
        stack = (np.rint(stack * MAX_FRACTIONAL_VALUE) / MAX_FRACTIONAL_VALUE).astype(np.float32)
        kind, syntax = hd.seg.SegmentationTypeValues.FRACTIONAL, RLELossless
        description = "mean probability per target (ensemble mean)"
    else:
        assert labels is not None
        stack = np.stack([labels == t.id for t in result.targets], axis=-1).astype(np.uint8)
        kind, syntax = hd.seg.SegmentationTypeValues.BINARY, ExplicitVRLittleEndian
        description = "label map: most probable target where its ensemble mean > 0.5"
    frames = np.ascontiguousarray(stack.transpose(2, 1, 0, 3))  # (K, rows=J, cols=I, segments)

    algorithm = hd.AlgorithmIdentificationSequence(
        name="latentseg",
        family=codes.cid7162.ArtificialIntelligence,
        version=str(bundle_version)[:64] or "unknown",
        source="latentseg",
        parameters={"bundle": str(bundle_name), "bundle_version": str(bundle_version), **dict(parameters or {})},
    )
    with warnings.catch_warnings():
        # Real series often carry one-component patient names ("JANCT000"); that is not our problem.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(
            _clean_sources(source_images), frames, kind, syntax, result.targets, algorithm,
            bundle_name=bundle_name, series_number=series_number,
            content_description=f"latentseg {bundle_name} {bundle_version}: {description}",
        )
    seg.SeriesDescription = f"latentseg {kind.value.lower()} segmentation"[:64]
    return seg


def _segmentation(
    sources: list[Dataset],
    frames: np.ndarray,
    kind: hd.seg.SegmentationTypeValues,
    syntax: str,
    targets: Sequence[Target],
    algorithm: hd.AlgorithmIdentificationSequence,
    *,
    bundle_name: str,
    series_number: int,
    content_description: str,
) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=kind,
        segment_descriptions=_segment_descriptions(targets, algorithm),
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="latentseg",
        manufacturer_model_name=str(bundle_name)[:64] or "latentseg",
        software_versions=_software_version(),
        device_serial_number="0",
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        content_description=content_description[:64],
        content_label="LATENTSEG",
        transfer_syntax_uid=syntax,
        omit_empty_frames=bool(frames.any()),  # an all-empty SEG keeps its frames (it must have one)
    )


def variance_map_filename(target_name: str) -> str:
    return f"{target_name}_variance.dcm"


def build_variance_map(
    result: Segmentation,
    target: Target,
    source_images: Sequence[Dataset],
    *,
    bundle_name: str,
    bundle_version: str,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
) -> hd.pm.ParametricMap:
    """A Parametric Map of ``target``'s ensemble variance, referencing ``source_images``.

    Each frame is one source slice's ``variance[:, :, k].T``, referencing that slice (highdicom
    orders the frames by position), stored as 16-bit unsigned integers RLE-compressed (float pixel
    data admits no compression, and a float32 map costs 1 MiB per 512x512 slice and target); the
    real-world value mapping (unit UCUM "1") turns a stored value v back into ``v * max / 65535``,
    so the variance comes back to within one such step. Give the targets of one job the same
    ``series_instance_uid`` (one series, one instance per target).
    """
    if target.name not in result.variance:
        raise ValueError(f"the result has no variance map for {target.name}")
    variance = np.asarray(result.variance[target.name], dtype=np.float32)
    _check_on_source_grid(variance.shape, result.affine, source_images)
    values = np.clip(np.ascontiguousarray(variance.transpose(2, 1, 0)), 0.0, None)  # (K, rows=J, cols=I)
    top = max(float(values.max()) if values.size else 0.0, 1e-6)
    slope = top / VARIANCE_LEVELS
    frames = np.round(values / slope).astype(np.uint16)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="variance",
        lut_explanation=f"{target.display}: ensemble variance of the probability"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0, VARIANCE_LEVELS),
        slope=slope,
        intercept=0.0,
        quantity_definition=_coded(VARIANCE_QUANTITY),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*window_(center|width).*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        pm = hd.pm.ParametricMap(
            source_images=_clean_sources(source_images),
            pixel_array=frames,
            series_instance_uid=series_instance_uid or generate_uid(),
            series_number=VARIANCE_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=instance_number,
            manufacturer="latentseg",
            manufacturer_model_name=str(bundle_name)[:64] or "latentseg",
            software_versions=_software_version(),
            device_serial_number="0",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            window_center=VARIANCE_LEVELS / 2,
            window_width=VARIANCE_LEVELS,
            content_description=f"latentseg {bundle_version}: {target.name} variance"[:64],
            content_label="VARIANCE",
            transfer_syntax_uid=RLELossless,
        )
    pm.SeriesDescription = "latentseg variance (uncertainty)"
    return pm


# ---------------------------------------------------------------- a CT series for NIfTI input


def _derived_geometry(affine: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
    lps = LPS_FROM_RAS @ np.asarray(affine, dtype=np.float64)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if (spacing <= 0).any() or not np.isfinite(axes).all():
        raise InputError(f"{where}: the affine has a zero or non-finite voxel size")
    row_cos, col_cos = axes[:, 0] / spacing[0], axes[:, 1] / spacing[1]
    normal = np.cross(row_cos, col_cos)
    step = axes[:, 2]
    if (
        abs(float(row_cos @ col_cos)) > _GEOMETRY_TOL
        or np.linalg.norm(np.cross(step / spacing[2], normal)) > _GEOMETRY_TOL
    ):
        raise InputError(
            f"{where}: the affine is sheared (voxel axes not orthogonal); DICOM slices cannot represent it"
        )
    return row_cos, col_cos, float(spacing[0]), float(spacing[1]), lps


def derive_ct_series(volume: VolumeLike, *, series_description: str = "latentseg derived CT") -> list[Dataset]:
    """CT Image Storage datasets, one per ``volume.data[:, :, k]``, on the volume's own grid.

    HU are rounded to int16 (RescaleSlope 1, RescaleIntercept 0). The patient is "Anonymous"
    and study, series and frame of reference are new UIDs: the NIfTI carried no identity.
    """
    row_cos, col_cos, col_spacing, row_spacing, lps = _derived_geometry(volume.affine, "the input volume")
    cols, rows, depth = (int(n) for n in volume.data.shape)
    slice_step = float(np.linalg.norm(lps[:3, 2]))
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    pixels = np.clip(np.rint(volume.data), -32768, 32767).astype(np.int16)
    datasets: list[Dataset] = []
    for k in range(depth):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "latentseg"
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = series_description[:64]
        ds.PatientName = "Anonymous"
        ds.PatientID = study_uid[-16:]
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.KVP = ""
        ds.SliceThickness = f"{slice_step:.6g}"
        ds.SpacingBetweenSlices = f"{slice_step:.6g}"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = DERIVED_CT_SERIES_NUMBER
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        position = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cos, *col_cos)]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{float(position @ np.cross(row_cos, col_cos)):.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{row_spacing:.8g}", f"{col_spacing:.8g}"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        datasets.append(ds)
    return datasets


def write_derived_ct_series(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Write ``datasets`` as ``ct_00001.dcm`` ... into ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"ct_{int(ds.InstanceNumber):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


SEG_FILENAME = "segmentation.dcm"
PROBABILITY_SEG_FILENAME = "probability.dcm"
DERIVED_CT_DIRNAME = "dicom_ct"
DERIVED_CT_ZIPNAME = "dicom_ct.zip"


def write_dicom_seg(
    result: Segmentation | LabelMap,
    out_dir: Path,
    *,
    volume: VolumeLike,
    source_images: Sequence[Dataset] | None,
    bundle_name: str,
    bundle_version: str,
    fractional: bool = False,
    parameters: Mapping[str, str] | None = None,
    derived_ct_as_zip: bool = False,
    uncertainty: bool = True,
) -> list[Path]:
    """Write ``segmentation.dcm`` into ``out_dir``; returns what was written.

    With ``uncertainty`` and a full result (not a :class:`LabelMap`), ``probability.dcm`` (the
    FRACTIONAL SEG of the mean, unless ``segmentation.dcm`` already is one) and one
    ``{target}_variance.dcm`` Parametric Map per target follow the SEG.

    ``source_images`` are the input series' headers (DICOM input). Without them (NIfTI
    input) a CT series is derived from ``volume`` and written first, as the folder
    ``dicom_ct/`` or, with ``derived_ct_as_zip``, as ``dicom_ct.zip`` (for flat result
    listings); the returned list then holds the SEG and that folder or zip.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra: list[Path] = []
    if source_images is None:
        derived = derive_ct_series(volume)
        if derived_ct_as_zip:
            extra.append(_write_zip(derived, out_dir / DERIVED_CT_ZIPNAME))
        else:
            write_derived_ct_series(derived, out_dir / DERIVED_CT_DIRNAME)
            extra.append(out_dir / DERIVED_CT_DIRNAME)
        source_images = derived
    seg = build_dicom_seg(
        result, source_images, bundle_name=bundle_name, bundle_version=bundle_version,
        fractional=fractional, parameters=parameters,
    )
    path = out_dir / SEG_FILENAME
    seg.save_as(path, enforce_file_format=True)
    written = [path]
    if uncertainty and isinstance(result, _HasMeans) and hasattr(result, "variance"):
        if not fractional:
            probability = build_dicom_seg(
                result, source_images, bundle_name=bundle_name, bundle_version=bundle_version, fractional=True,
                parameters=parameters, series_number=PROBABILITY_SEG_SERIES_NUMBER,
            )
            probability.save_as(out_dir / PROBABILITY_SEG_FILENAME, enforce_file_format=True)
            written.append(out_dir / PROBABILITY_SEG_FILENAME)
        series_uid = generate_uid()
        for number, target in enumerate(result.targets, start=1):
            pm = build_variance_map(
                result, target, source_images, bundle_name=bundle_name, bundle_version=bundle_version,
                series_instance_uid=series_uid, instance_number=number,
            )
            pm.save_as(out_dir / variance_map_filename(target.name), enforce_file_format=True)
            written.append(out_dir / variance_map_filename(target.name))
    return [*written, *extra]


def _write_zip(datasets: Sequence[Dataset], path: Path) -> Path:
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            archive.writestr(f"ct_{int(ds.InstanceNumber):05d}.dcm", buffer.getvalue())
    return path
