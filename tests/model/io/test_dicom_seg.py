"""DICOM-SEG output (model.io.dicom_seg), read back with pydicom and highdicom, on the shared real series.

The round trip segments the real 3-slice CT with a random tiny bundle; the reference SEG
``liver.dcm`` is read and lined up with ``liver_seg.nrrd`` by geometry (SimpleITK reads NRRD).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from model.bundle.loaded import LoadedBundle
from model.io.dicom_io import DicomSeries, read_dicom_series
from model.io.dicom_seg import (
    DERIVED_CT_DIRNAME,
    PRIVATE_SCHEME,
    SEG_FILENAME,
    build_dicom_seg,
    derive_ct_series,
    write_dicom_seg,
)
from model.errors import InputError
from model.inference.pipeline import Segmentation, SegmentationOptions, segment_volume
from model.inference.preprocessing import Volume
from model.targets.vocabulary import default_vocabulary

SERIES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dicom-ct3slice"
VOCABULARY = default_vocabulary()
needs_series = pytest.mark.skipif(
    not (SERIES / "ct-3slice_01.dcm").is_file(),
    reason=f"real data not available: {SERIES} is absent (shared data lives beside the repo)",
)


@pytest.fixture(scope="module")
def series() -> DicomSeries:
    if not (SERIES / "ct-3slice_01.dcm").is_file():
        pytest.skip(f"real data not available: {SERIES}")
    return read_dicom_series(SERIES)


@pytest.fixture(scope="module")
def segmented(series: DicomSeries, random_bundle: LoadedBundle) -> Segmentation:
    return segment_volume(
        random_bundle, series.volume, ["liver", "kidney_left", "femur_head_right"], SegmentationOptions(ensemble=2, steps=2)
    )


def frames_by_source(seg_path: Path, series: DicomSeries) -> np.ndarray:
    """(K, rows, cols, segments) in the series' geometric order, looked up by source SOPInstanceUID."""
    seg = hd.seg.segread(seg_path)
    return seg.get_pixels_by_source_instance(list(series.info.sop_instance_uids))


@needs_series
def test_binary_seg_round_trip_matches_the_label_map(
    series: DicomSeries, segmented: Segmentation, random_bundle: LoadedBundle, tmp_path: Path
) -> None:
    written = write_dicom_seg(
        segmented, tmp_path, volume=series.volume, source_images=series.headers,
        bundle_name=random_bundle.name, bundle_version=random_bundle.version, parameters={"steps": "2"},
    )
    assert written[0] == tmp_path / SEG_FILENAME  # then the uncertainty objects (tests/model/io/test_parametric_map.py)
    assert [p.name for p in written[1:]] == [
        "probability.dcm", "liver_variance.dcm", "kidney_left_variance.dcm", "femur_head_right_variance.dcm"
    ]
    labels = segmented.labels()
    assert labels.any(), "the random bundle should label something on the real series"

    frames = frames_by_source(written[0], series)
    assert frames.shape == (3, 512, 512, 3)
    for s, target in enumerate(segmented.targets):
        expected = (labels == target.id).transpose(2, 1, 0)  # (K, rows=J, cols=I)
        np.testing.assert_array_equal(frames[..., s].astype(bool), expected, err_msg=target.name)

    ds = pydicom.dcmread(written[0])
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    source_uid = pydicom.dcmread(SERIES / "ct-3slice_01.dcm").SeriesInstanceUID
    (ref_series,) = ds.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == source_uid
    assert {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence} == set(
        series.info.sop_instance_uids
    )
    assert ds.StudyInstanceUID == series.info.study_instance_uid
    assert ds.FrameOfReferenceUID == series.info.frame_of_reference_uid
    # every stored frame points at the source slice at its own position
    positions = {uid: float(h.ImagePositionPatient[2]) for uid, h in zip(series.info.sop_instance_uids, series.headers)}
    for frame in ds.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
        assert positions[source] == pytest.approx(z)

    liver, kidney, femur = ds.SegmentSequence
    assert (liver.SegmentLabel, liver.TrackingID) == ("Liver", "liver")
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert "SegmentedPropertyTypeModifierCodeSequence" not in liver.SegmentedPropertyTypeCodeSequence[0]
    kidney_type = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert (kidney_type.CodeValue, kidney_type.CodingSchemeDesignator) == ("64033007", "SCT")
    assert kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"  # Left
    femur_type = femur.SegmentedPropertyTypeCodeSequence[0]  # no SNOMED code in the vocabulary: private
    assert (femur_type.CodeValue, femur_type.CodingSchemeDesignator) == ("femur_head_right", PRIVATE_SCHEME)
    assert femur_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"  # Right
    algorithm = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "latentseg"
    assert algorithm.AlgorithmVersion == random_bundle.version
    assert random_bundle.name in algorithm.AlgorithmParameters
    assert liver.SegmentAlgorithmType == "AUTOMATIC"


@needs_series
def test_fractional_seg_stores_the_mean_probability(
    series: DicomSeries, segmented: Segmentation, tmp_path: Path
) -> None:
    seg = build_dicom_seg(segmented, series.headers, bundle_name="b", bundle_version="1", fractional=True)
    path = tmp_path / "fractional.dcm"
    seg.save_as(path)
    assert pydicom.dcmread(path).SegmentationType == "FRACTIONAL"
    frames = frames_by_source(path, series)
    for s, target in enumerate(segmented.targets):
        expected = segmented.mean[target.name].transpose(2, 1, 0)
        np.testing.assert_allclose(frames[..., s], expected, atol=0.5 / 255 + 1e-6, err_msg=target.name)


@needs_series
def test_reference_liver_seg_lines_up_with_the_nrrd_label_by_geometry(series: DicomSeries) -> None:
    sitk = pytest.importorskip("SimpleITK")
    reference = hd.seg.segread(SERIES / "liver.dcm")  # highdicom reads dcmqi's SEG
    (number,) = reference.get_segment_numbers(segment_label="Liver")
    assert reference.get_segment_description(number).segmented_property_type.meaning == "Liver"
    # Frames by their own ImagePositionPatient (dcmqi does not declare preserved spatial locations).
    ds = pydicom.dcmread(SERIES / "liver.dcm")
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    by_z = {}
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence, strict=True):
        assert item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == number
        by_z[round(float(item.PlanePositionSequence[0].ImagePositionPatient[2]), 3)] = frame.astype(bool)
    nrrd = sitk.ReadImage(str(SERIES / "liver_seg.nrrd"))
    assert np.allclose(nrrd.GetDirection(), np.eye(3).ravel())
    assert np.allclose(nrrd.GetOrigin()[:2], [float(v) for v in series.headers[0].ImagePositionPatient[:2]], atol=1e-3)
    label = sitk.GetArrayFromImage(nrrd) == 1  # (z, y, x)
    compared = 0
    for n in range(label.shape[0]):
        z = round(nrrd.GetOrigin()[2] + n * nrrd.GetSpacing()[2], 3)
        np.testing.assert_array_equal(by_z[z], label[n], err_msg=f"z={z}")
        compared += int(label[n].sum())
    assert compared > 100_000  # the liver is large on these slices: not a comparison of empty frames
    assert not np.array_equal(label[0], label[-1])  # slices differ, so a wrong order would be caught
    # and our reader puts the same slices at the same z: the SEG frames line up with our volume
    for k, header in enumerate(series.headers):
        z = round(float(header.ImagePositionPatient[2]), 3)
        assert z == pytest.approx((series.volume.affine @ [0, 0, k, 1])[2], abs=1e-3)
        assert by_z[z].shape == series.volume.data[:, :, k].T.shape


def _sphere_segmentation(volume: Volume, names: list[str]) -> Segmentation:
    shape = volume.shape
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    means, variances = {}, {}
    for n, name in enumerate(names):
        centre = np.array([0.4 * (n - 0.5), 0.0, 0.0])
        distance = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0))
        means[name] = np.clip(1.2 - 1.5 * distance, 0, 1).astype(np.float32)
        variances[name] = np.zeros(shape, np.float32)
    return Segmentation(targets=VOCABULARY.resolve(names), mean=means, variance=variances, affine=volume.affine)


def test_nifti_input_gets_a_derived_ct_series(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    affine = np.array([[-1.5, 0, 0, 40.0], [0, 1.25, 0, -30.0], [0, 0, 3.0, 12.0], [0, 0, 0, 1]])  # LAS
    volume = Volume(data=rng.normal(40, 200, (24, 20, 6)).astype(np.float32), affine=affine)
    result = _sphere_segmentation(volume, ["spleen", "kidney_right"])
    written = write_dicom_seg(
        result, tmp_path, volume=volume, source_images=None, bundle_name="b", bundle_version="1"
    )
    assert written == [
        tmp_path / n for n in (SEG_FILENAME, "probability.dcm", "spleen_variance.dcm", "kidney_right_variance.dcm",
                               DERIVED_CT_DIRNAME)
    ]
    derived = read_dicom_series(tmp_path / DERIVED_CT_DIRNAME)
    # the derived series is the same grid: same world position for every voxel, HU rounded
    flip = derived.volume.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]])
    same_order = np.allclose(derived.volume.affine, affine, atol=1e-4)
    data = derived.volume.data if same_order else derived.volume.data[:, :, ::-1]
    assert same_order or np.allclose(flip, affine, atol=1e-4)
    np.testing.assert_array_equal(data, np.rint(volume.data))

    seg = hd.seg.segread(written[0])
    ds = pydicom.dcmread(written[0])
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == derived.info.series_instance_uid
    frames = seg.get_pixels_by_source_instance(list(derived.info.sop_instance_uids))
    labels = result.labels()
    if not same_order:
        labels = labels[:, :, ::-1]
    for s, target in enumerate(result.targets):
        np.testing.assert_array_equal(frames[..., s].astype(bool), (labels == target.id).transpose(2, 1, 0))


def test_sheared_nifti_cannot_become_dicom_slices() -> None:
    affine = np.array([[1.0, 0.3, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    with pytest.raises(InputError, match="sheared"):
        derive_ct_series(Volume(data=np.zeros((4, 4, 3), np.float32), affine=affine))


def test_empty_result_still_makes_a_valid_seg_and_grids_must_match(tmp_path: Path) -> None:
    volume = Volume(data=np.zeros((16, 12, 4), np.float32), affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    sources = derive_ct_series(volume)
    empty = Segmentation(
        targets=VOCABULARY.resolve("liver"),
        mean={"liver": np.zeros(volume.shape, np.float32)},
        variance={"liver": np.zeros(volume.shape, np.float32)},
        affine=volume.affine,
    )
    path = tmp_path / "empty.dcm"
    build_dicom_seg(empty, sources, bundle_name="b", bundle_version="1").save_as(path)
    frames = hd.seg.segread(path).get_pixels_by_source_instance([s.SOPInstanceUID for s in sources])
    assert frames.shape == (4, 12, 16, 1) and not frames.any()
    shifted = Segmentation(empty.targets, empty.mean, empty.variance, affine=np.diag([2.0, 2.0, 3.5, 1.0]))
    with pytest.raises(ValueError, match="geometry"):
        build_dicom_seg(shifted, sources, bundle_name="b", bundle_version="1")
    with pytest.raises(ValueError, match="shape"):
        build_dicom_seg(empty, sources[:3], bundle_name="b", bundle_version="1")


def test_derived_ct_as_zip_for_flat_result_listings(tmp_path: Path) -> None:
    volume = Volume(data=np.full((12, 10, 3), 35.0, np.float32), affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    result = _sphere_segmentation(volume, ["liver"])
    written = write_dicom_seg(
        result, tmp_path, volume=volume, source_images=None, bundle_name="b", bundle_version="1",
        derived_ct_as_zip=True,
    )
    assert [p.name for p in written] == [SEG_FILENAME, "probability.dcm", "liver_variance.dcm", "dicom_ct.zip"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # files only
    derived = read_dicom_series(written[-1])
    ds = pydicom.dcmread(written[0])
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == derived.info.series_instance_uid
    np.testing.assert_array_equal(derived.volume.data, np.full((12, 10, 3), 35.0))


def test_a_label_map_alone_makes_the_same_binary_seg(tmp_path: Path) -> None:
    from model.io.dicom_seg import LabelMap

    volume = Volume(data=np.zeros((20, 16, 5), np.float32), affine=np.diag([1.5, 1.5, 2.5, 1.0]))
    result = _sphere_segmentation(volume, ["spleen", "kidney_right"])
    sources = derive_ct_series(volume)
    label_map = LabelMap(targets=result.targets, array=result.labels(), affine=result.affine)
    uids = [s.SOPInstanceUID for s in sources]
    frames = []
    for name, source in (("full", result), ("labels", label_map)):
        build_dicom_seg(source, sources, bundle_name="b", bundle_version="1").save_as(tmp_path / f"{name}.dcm")
        frames.append(hd.seg.segread(tmp_path / f"{name}.dcm").get_pixels_by_source_instance(uids))
    np.testing.assert_array_equal(frames[0], frames[1])
    assert frames[0].any()
    with pytest.raises(ValueError, match="FRACTIONAL"):
        build_dicom_seg(label_map, sources, bundle_name="b", bundle_version="1", fractional=True)
