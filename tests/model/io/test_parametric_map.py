"""Uncertainty in DICOM (model.io.dicom_seg): the FRACTIONAL SEG of the mean and the variance as a
Parametric Map, written beside the BINARY SEG, read back with highdicom and compared with the
NIfTI maps the same job wrote (the mean to the SEG's 1/255 quantisation step, the variance to
its 16-bit quantisation step, max/65535: both are stored RLE-compressed).

The real 3-slice CT is segmented with the random tiny bundle through the worker's own path
(pipeline -> NIfTI files -> model.io.interop reads them back and writes the DICOM objects).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from model.bundle.loaded import LoadedBundle
from model.io.dicom_io import DicomSeries, read_dicom_series
from model.io.dicom_seg import (
    PROBABILITY_SEG_FILENAME,
    SEG_FILENAME,
    build_variance_map,
    derive_ct_series,
    variance_map_filename,
)
from model.io.interop import InteropRequest, write_interop_outputs
from model.inference.pipeline import Segmentation, SegmentationOptions, predict_model_grid, write_prediction
from model.inference.preprocessing import Volume
from model.targets.vocabulary import default_vocabulary

SERIES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dicom-ct3slice"
TARGETS = ["liver", "spleen"]
QUANTUM = 1.0 / 255


@pytest.fixture(scope="module")
def job(random_bundle: LoadedBundle, tmp_path_factory: pytest.TempPathFactory) -> tuple[DicomSeries, Path, list[Path]]:
    if not (SERIES / "ct-3slice_01.dcm").is_file():
        pytest.skip(f"real data not available: {SERIES} is absent (shared data lives beside the repo)")
    series = read_dicom_series(SERIES)
    out = tmp_path_factory.mktemp("uncertainty")
    prediction = predict_model_grid(random_bundle, series.volume, TARGETS, SegmentationOptions(ensemble=3, steps=2))
    write_prediction(prediction, out)
    written = write_interop_outputs(
        out, series.volume, prediction.targets, InteropRequest(dicom_seg=True), source_images=series.headers,
        bundle_name=random_bundle.name, bundle_version=random_bundle.version,
    )
    return series, out, written


def _nifti(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def test_dicom_output_carries_the_mean_and_the_variance(job: tuple[DicomSeries, Path, list[Path]]) -> None:
    _, out, written = job
    assert [p.name for p in written] == [
        SEG_FILENAME, PROBABILITY_SEG_FILENAME, *(variance_map_filename(t) for t in TARGETS)
    ]
    assert pydicom.dcmread(out / SEG_FILENAME).SegmentationType == "BINARY"


def test_fractional_seg_matches_the_nifti_means_to_the_quantisation_step(
    job: tuple[DicomSeries, Path, list[Path]],
) -> None:
    series, out, _ = job
    seg = hd.seg.segread(out / PROBABILITY_SEG_FILENAME)
    ds = pydicom.dcmread(out / PROBABILITY_SEG_FILENAME)
    assert ds.SegmentationType == "FRACTIONAL" and ds.SegmentationFractionalType == "PROBABILITY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.info.series_instance_uid
    assert ds.FrameOfReferenceUID == series.info.frame_of_reference_uid
    binary = pydicom.dcmread(out / SEG_FILENAME)
    assert ds.SeriesInstanceUID != binary.SeriesInstanceUID and ds.StudyInstanceUID == binary.StudyInstanceUID
    frames = seg.get_pixels_by_source_instance(list(series.info.sop_instance_uids))  # (K, rows, cols, segments)
    for s, name in enumerate(TARGETS):
        assert seg.get_segment_description(s + 1).tracking_id == name
        mean = _nifti(out / f"{name}_mean.nii.gz").transpose(2, 1, 0)
        assert 0.05 < float(mean.max()) and float(mean.std()) > 0.01, "a constant map would prove nothing"
        np.testing.assert_allclose(frames[..., s], mean, atol=QUANTUM / 2 + 1e-6, err_msg=name)


def test_variance_parametric_map_holds_the_nifti_variance_to_its_step(job: tuple[DicomSeries, Path, list[Path]]) -> None:
    series, out, _ = job
    series_uids = set()
    for number, name in enumerate(TARGETS, start=1):
        ds = pydicom.dcmread(out / variance_map_filename(name))
        pm = hd.pm.ParametricMap.from_dataset(ds)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
        assert "PixelData" in ds and ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
        assert int(ds.InstanceNumber) == number
        series_uids.add(ds.SeriesInstanceUID)
        assert ds.StudyInstanceUID == series.info.study_instance_uid
        assert ds.FrameOfReferenceUID == series.info.frame_of_reference_uid
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.info.series_instance_uid
        assert {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(
            series.info.sop_instance_uids
        )
        # the real-world value mapping: stored 0..65535 -> 0..max, unit "1" (UCUM), quantity "Variance"
        mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        variance = _nifti(out / f"{name}_variance.nii.gz").transpose(2, 1, 0)
        step = float(variance.max()) / 65535
        assert float(mapping.RealWorldValueSlope) == pytest.approx(step) and float(mapping.RealWorldValueIntercept) == 0
        unit = mapping.MeasurementUnitsCodeSequence[0]
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
        quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
        assert (quantity.CodeValue, quantity.CodingSchemeDesignator, quantity.CodeMeaning) == (
            "C1711260", "UMLS", "Variance"
        )
        assert float(variance.max()) > 0, "ensemble 3 on a random bundle should disagree somewhere"
        assert int(mapping.RealWorldValueLastValueMapped) == 65535
        # highdicom stores frames in its own plane order: line them up by their source slice, and
        # check that each frame sits at that slice's position
        slice_of = {uid: k for k, uid in enumerate(series.info.sop_instance_uids)}
        assert pm.pixel_array.dtype == np.uint16 and pm.pixel_array.shape == variance.shape
        seen = []
        for frame, item in zip(pm.pixel_array, ds.PerFrameFunctionalGroupsSequence, strict=True):
            k = slice_of[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
            position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
            assert position == pytest.approx([float(v) for v in series.headers[k].ImagePositionPatient], abs=1e-3)
            np.testing.assert_allclose(frame * step, variance[k], rtol=0, atol=step,
                                       err_msg=f"{name} slice {k}")
            seen.append(k)
        assert sorted(seen) == [0, 1, 2]
    assert len(series_uids) == 1  # one variance series per job, one instance per target


def test_variance_map_on_a_derived_series_and_grid_checks(tmp_path: Path) -> None:
    vocabulary = default_vocabulary()
    volume = Volume(data=np.zeros((10, 8, 4), np.float32), affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    rng = np.random.default_rng(1)
    variance = rng.uniform(0, 0.25, volume.shape).astype(np.float32)
    result = Segmentation(
        targets=vocabulary.resolve("liver"), mean={"liver": np.zeros(volume.shape, np.float32)},
        variance={"liver": variance}, affine=volume.affine,
    )
    sources = derive_ct_series(volume)
    pm = build_variance_map(result, result.targets[0], sources, bundle_name="b", bundle_version="1")
    pm.save_as(tmp_path / "v.dcm")
    ds = pydicom.dcmread(tmp_path / "v.dcm")
    order = {s.SOPInstanceUID: k for k, s in enumerate(sources)}
    for frame, item in zip(ds.pixel_array, ds.PerFrameFunctionalGroupsSequence, strict=True):
        k = order[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        step = float(variance.max()) / 65535
        np.testing.assert_allclose(frame * step, variance[:, :, k].T, rtol=0, atol=step)
    with pytest.raises(ValueError, match="shape"):
        build_variance_map(result, result.targets[0], sources[:3], bundle_name="b", bundle_version="1")
    with pytest.raises(ValueError, match="no variance map"):
        build_variance_map(result, vocabulary.resolve("spleen")[0], sources, bundle_name="b", bundle_version="1")
