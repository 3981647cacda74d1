"""statistics.json: known volumes on a hand-made prediction, the ensemble's spread, the review flag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.bundle.loaded import LoadedBundle
from model.inference.ensemble import member_mask_overlaps
from model.inference.pipeline import ModelGridPrediction, SegmentationOptions, segment_volume, write_prediction
from model.inference.preprocessing import Volume
from model.inference.statistics import (
    MemberSummary,
    above_typical_volume,
    read_statistics,
    summary_line,
    target_statistics,
)
from model.targets.vocabulary import default_vocabulary, size_prior

VOCAB = default_vocabulary()
MODEL_MM = 3.0
SOURCE_MM = 1.5
MODEL_SHAPE = (64, 64, 60)


def _prediction(boxes: dict[str, tuple[slice, slice, slice] | None], members: dict[str, MemberSummary]) -> ModelGridPrediction:
    """Mean 1 inside each target's box on a 3 mm RAS model grid, 0 elsewhere; the input grid is LPS at
    1.5 mm, offset by a quarter of a model voxel, so every box face lies halfway between input voxel centres."""
    targets = VOCAB.resolve(list(boxes))
    mean = torch.zeros((len(targets), *MODEL_SHAPE))
    for index, box in enumerate(boxes.values()):
        if box is not None:
            mean[index][box] = 1.0
    model_affine = np.diag([MODEL_MM, MODEL_MM, MODEL_MM, 1.0])
    model_affine[:3, 3] = (-90.0, -120.0, 30.0)
    shape = tuple(int(s * MODEL_MM / SOURCE_MM) for s in MODEL_SHAPE)
    source_affine = np.diag([-SOURCE_MM, -SOURCE_MM, SOURCE_MM, 1.0])
    first = model_affine[:3, 3] - MODEL_MM / 4  # first input centre (RAS), a quarter voxel below the model's
    last = first + SOURCE_MM * (np.array(shape) - 1)
    source_affine[:3, 3] = (last[0], last[1], first[2])  # x and y run backwards (LPS)
    ensemble = len(next(iter(members.values())).voxels)
    voxels = torch.tensor([members[t.name].voxels for t in targets], dtype=torch.int64)
    inter = torch.tensor([members[t.name].intersections for t in targets], dtype=torch.int64)
    assert voxels.shape == (len(targets), ensemble)
    return ModelGridPrediction(targets, mean, torch.zeros_like(mean), model_affine, source_affine, shape, voxels, inter)


def _agreeing(volume_voxels: int, ensemble: int = 3) -> MemberSummary:
    return MemberSummary.from_counts([volume_voxels] * ensemble, [[volume_voxels] * ensemble] * ensemble, MODEL_MM ** 3 / 1000)


LIVER_BOX = (slice(20, 60), slice(10, 50), slice(20, 60))  # 40 x 40 x 40 voxels of 27 mm^3 = 1728 ml; touches the top
# (RAS model grid: x 20-60 of 64 is the patient's right, where a liver belongs)
KIDNEY_A = (slice(48, 56), slice(20, 28), slice(5, 17))  # 8 x 8 x 12 = 768 voxels
KIDNEY_B = (slice(48, 56), slice(40, 48), slice(5, 17))  # a second, separate piece


def test_known_volumes_hu_box_and_components_through_write_prediction(tmp_path: Path) -> None:
    pred = _prediction({"liver": LIVER_BOX, "kidney_left": KIDNEY_A, "spleen": None},
                       {"liver": _agreeing(64000), "kidney_left": _agreeing(1536), "spleen": _agreeing(0)})
    pred.mean[1][KIDNEY_B] = 1.0
    hu = np.full(pred.source_shape, 50.0, np.float32)
    hu[::2] = 70.0  # alternating planes: mean 60, sd 10 inside any box spanning whole planes
    written = write_prediction(pred, tmp_path, hu=hu)
    assert tmp_path / "statistics.json" in written
    doc = read_statistics(tmp_path / "statistics.json")
    assert doc["schema_version"] == 1 and doc["ensemble"] == 3
    liver, kidney, spleen = (doc["targets"][n] for n in ("liver", "kidney_left", "spleen"))

    assert liver["volume_ml"] == pytest.approx(40 ** 3 * 27 / 1000, rel=0.01)
    assert kidney["volume_ml"] == pytest.approx(2 * 768 * 27 / 1000, rel=0.01)
    assert liver["voxel_count"] == pytest.approx(liver["volume_ml"] / SOURCE_MM ** 3 * 1000)
    assert liver["hu_mean"] == pytest.approx(60.0, abs=0.5) and liver["hu_sd"] == pytest.approx(10.0, abs=0.5)
    # The box in patient mm: voxel faces of the model box (RAS), and its LPS mirror.
    origin = np.array([-90.0, -120.0, 30.0])
    lo = origin + MODEL_MM * np.array([s.start for s in LIVER_BOX]) - MODEL_MM / 2
    hi = origin + MODEL_MM * np.array([s.stop for s in LIVER_BOX]) - MODEL_MM / 2
    assert np.allclose(liver["bbox_ras_mm"]["min"], lo, atol=SOURCE_MM) and np.allclose(liver["bbox_ras_mm"]["max"], hi, atol=SOURCE_MM)
    assert np.allclose(liver["bbox_lps_mm"]["min"], [-hi[0], -hi[1], lo[2]], atol=SOURCE_MM)
    assert np.allclose(liver["bbox_lps_mm"]["max"], [-lo[0], -lo[1], hi[2]], atol=SOURCE_MM)
    assert liver["axial_extent_mm"] == pytest.approx(40 * MODEL_MM, abs=SOURCE_MM)
    assert liver["connected_components"] == 1 and kidney["connected_components"] == 2
    assert liver["touches_edge"] and liver["edges_touched"] == ["superior"]
    assert not kidney["touches_edge"]
    # Members that agree: no spread.
    assert liver["ensemble_volume_ml"]["sd"] == 0 and liver["ensemble_volume_ml"]["mean"] == pytest.approx(1728)
    # The review flag: the clean liver passes; the absent spleen is flagged.
    assert liver["needs_review"] is False and liver["review_reason"] is None
    assert spleen["needs_review"] is True and "empty" in spleen["review_reason"]
    assert spleen["volume_ml"] == 0 and spleen["bbox_ras_mm"] is None and spleen["hu_mean"] is None
    line = summary_line(doc)
    assert "liver 1728 ml" in line and "spleen (empty mask)" in line.split("REVIEW:")[1]
    assert kidney["needs_review"] and "below the typical" in kidney["review_reason"]  # 41 ml, two pieces


def test_review_flag_names_an_organ_on_the_wrong_side() -> None:
    """The liver's centre on the patient's left (or a mirrored header) is flagged; on the right it is not."""
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LPS-like: voxel x grows toward the patient's left
    hu = np.full((80, 60, 40), -1000.0, np.float32)
    hu[10:70, 5:55, :] = 40.0  # the body, centred at voxel x 39.5
    liver = np.zeros(hu.shape, np.float32)
    liver[12:36, 10:50, 5:35] = 0.9  # low voxel x: the patient's right under this affine
    right = target_statistics(VOCAB.get("liver"), liver, None, hu, affine, _agreeing(28800))
    assert right["midline_offset_mm"] == pytest.approx((39.5 - 23.5) * 2.0, abs=0.1)
    assert "wrong" not in (right["review_reason"] or "")
    mirrored = target_statistics(VOCAB.get("liver"), liver[::-1].copy(), None, hu, affine, _agreeing(28800))
    assert mirrored["midline_offset_mm"] == pytest.approx(-32.0, abs=0.1)
    assert mirrored["needs_review"] and "to the patient's left of the body's, where it belongs on the right" in mirrored["review_reason"]
    # Paired organs by their name; midline structures never; no CT, no offset.
    kidney = target_statistics(VOCAB.get("kidney_left"), liver, None, hu, affine, _agreeing(28800))
    assert "belongs on the left" in kidney["review_reason"]
    aorta = target_statistics(VOCAB.get("aorta"), liver, None, hu, affine, _agreeing(28800))
    assert "belongs" not in (aorta["review_reason"] or "")
    assert target_statistics(VOCAB.get("liver"), liver[::-1].copy(), None, None, affine)["midline_offset_mm"] is None


def test_review_flag_small_organ_and_disagreeing_members() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    mean = np.zeros((40, 40, 40), np.float32)
    mean[10:15, 10:15, 10:15] = 0.9  # 125 voxels of 8 mm^3 = 1 ml: a kidney far below its typical range
    small = target_statistics(VOCAB.get("kidney_right"), mean, None, None, affine, _agreeing(125))
    assert small["needs_review"] and "below the typical" in small["review_reason"]
    assert small["typical_volume_ml"] == [size_prior("kidney_right").low_ml, size_prior("kidney_right").high_ml]
    # The same small mask cut off by the field of view is not called implausible.
    cut = np.zeros_like(mean)
    cut[:5, 10:15, 10:15] = 0.9
    assert not target_statistics(VOCAB.get("kidney_right"), cut, None, None, affine, _agreeing(125))["needs_review"]
    # Members that disagree: 4 members of 1000 voxels, each pair sharing 300.
    split = MemberSummary.from_counts([1000] * 4, [[1000 if i == j else 300 for j in range(4)] for i in range(4)], 0.027)
    big = np.zeros((60, 60, 60), np.float32)
    big[5:55, 5:55, 5:55] = 0.9  # 1 l at 8 mm^3 a voxel: within the liver's range
    entry = target_statistics(VOCAB.get("liver"), big, None, None, affine, split)
    assert entry["quality"]["pairwise_dice"] == pytest.approx(0.3)
    assert entry["needs_review"] and "disagree" in entry["review_reason"]
    assert "typical" not in entry["review_reason"]


def test_review_flag_organ_above_its_typical_range_even_at_the_edge() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    huge = np.zeros((90, 90, 90), np.float32)
    huge[:75, 5:85, 5:85] = 0.9  # 480,000 voxels of 8 mm^3 = 3.84 l, touching the edge: a liver spilled into the pelvis
    entry = target_statistics(VOCAB.get("liver"), huge, None, None, affine, _agreeing(480_000))
    assert entry["touches_edge"] and entry["needs_review"]
    assert entry["review_reason"].startswith("3840 ml is above the typical 1000-2500 ml")
    normal = np.zeros_like(huge)
    normal[5:65, 5:65, 5:65] = 0.9  # 1.728 l: inside the range
    assert not target_statistics(VOCAB.get("liver"), normal, None, None, affine, _agreeing(216_000))["needs_review"]
    assert above_typical_volume("liver", 3840.0) and not above_typical_volume("liver", 1728.0)
    assert not above_typical_volume("liver", None) and not above_typical_volume("liver_tumor", 1e6)  # no range


def test_member_counts_match_the_thresholded_members() -> None:
    probs = torch.rand(3, 2, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    voxels, inter = member_mask_overlaps(probs)
    masks = (probs > 0.5).numpy()
    for k in range(2):
        for e in range(4):
            assert voxels[k, e] == masks[:, k, e].sum()
            for f in range(4):
                assert inter[k, e, f] == (masks[:, k, e] & masks[:, k, f]).sum()


def _body(shape: tuple[int, int, int] = (36, 30, 6)) -> Volume:
    data = np.full(shape, -1000.0, np.float32)
    data[4:-4, 4:-4, :] = np.random.default_rng(0).normal(40, 60, (shape[0] - 8, shape[1] - 8, shape[2]))
    return Volume(data=data, affine=np.diag([-4.0, -4.0, 4.0, 1.0]))


def test_ensemble_spread_zero_for_one_member_and_positive_when_members_differ(random_bundle: LoadedBundle) -> None:
    volume = _body()
    one = segment_volume(random_bundle, volume, "liver", SegmentationOptions(ensemble=1, steps=2, largest_component=False))
    entry = target_statistics(one.targets[0], one.mean["liver"], one.variance["liver"], volume.data, volume.affine,
                              one.members["liver"])
    assert entry["ensemble_volume_ml"]["members"] == 1 and entry["ensemble_volume_ml"]["sd"] == 0
    assert entry["quality"]["pairwise_dice"] is None
    four = segment_volume(random_bundle, volume, "liver", SegmentationOptions(ensemble=4, steps=2, largest_component=False))
    members = four.members["liver"]
    assert len(set(members.voxels)) > 1  # the random network's members differ
    entry = target_statistics(four.targets[0], four.mean["liver"], four.variance["liver"], volume.data, volume.affine, members)
    spread = entry["ensemble_volume_ml"]
    assert spread["sd"] > 0 and spread["min"] < spread["max"]
    assert spread["mean"] == pytest.approx(float(np.mean(members.volumes_ml)), abs=1e-3)
    assert 0 <= entry["quality"]["pairwise_dice"] < 1
    json.dumps(entry, allow_nan=False)


def test_size_priors_cover_the_trained_organs_and_leave_the_vocabulary_hash_alone() -> None:
    from model.bundle.manifest import demo_bundle_path, read_manifest

    manifest = read_manifest(demo_bundle_path())  # the bundle's recorded vocabulary hash still matches
    assert manifest.vocabulary.sha256() == VOCAB.sha256()
    for name in manifest.trained_targets:
        prior = size_prior(name)
        assert prior is not None and 0 < prior.low_ml < prior.high_ml and prior.source
    assert all(size_prior(t.name) is None for t in VOCAB if t.is_lesion)
