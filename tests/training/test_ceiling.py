from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.bundle import load_bundle, write_random_bundle
from model.config import ModelConfig
from training.ceiling import mask_ae_ceiling, round_trip_dice
from training.data import prepare_case, read_dataset

DEMO_BUNDLE = Path(__file__).resolve().parents[2] / "model" / "bundles" / "demo"


def _blob() -> np.ndarray:
    mask = np.zeros((20, 20, 6), bool)
    mask[5:15, 6:12, 1:5] = True
    return mask


def test_identity_round_trip_is_perfect() -> None:
    assert round_trip_dice(_blob(), lambda m: m) == pytest.approx(1.0)


def test_shifted_round_trip_scores_the_overlap() -> None:
    mask = _blob()
    shifted = np.roll(mask, 2, axis=0)
    expected = 2 * np.logical_and(mask, shifted).sum() / (mask.sum() + shifted.sum())
    # The round trip sees padded (B, 1, H, W) slices: roll along H reproduces the shift.
    assert round_trip_dice(mask, lambda m: torch.roll(m, 2, dims=2)) == pytest.approx(expected)


def test_round_trip_that_erases_scores_zero_and_empty_truth_is_refused() -> None:
    assert round_trip_dice(_blob(), torch.zeros_like) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        round_trip_dice(np.zeros((8, 8, 3), bool), lambda m: m)


def test_ceiling_reports_each_present_target_once_per_case(msd_phantoms: Path, tmp_path: Path) -> None:
    bundle = load_bundle(write_random_bundle(tmp_path / "random"), device="cpu")
    results = mask_ae_ceiling(bundle, msd_phantoms, max_cases=2)
    source = read_dataset(msd_phantoms, bundle.vocabulary)
    present: dict[str, int] = {}
    for files in source.cases[:2]:
        case = prepare_case(files, source.label_map, bundle.vocabulary, bundle.config.preprocess)
        for target_id in case.present():
            name = bundle.vocabulary.by_id(target_id).name
            present[name] = present.get(name, 0) + 1
    assert {r.target: r.cases for r in results} == present
    assert all(0.0 <= r.dice_min <= r.dice_mean <= 1.0 for r in results)
    only = mask_ae_ceiling(bundle, msd_phantoms, max_cases=2, targets=["liver"])
    assert [r.target for r in only] == ["liver"]


@pytest.mark.skipif(not (DEMO_BUNDLE / "bundle.json").is_file(), reason="no demo bundle")
def test_trained_demo_auto_encoder_reconstructs_the_liver(msd_phantoms: Path) -> None:
    bundle = load_bundle(DEMO_BUNDLE, device="cpu")
    assert isinstance(bundle.config, ModelConfig)
    (liver,) = mask_ae_ceiling(bundle, msd_phantoms, max_cases=1, targets=["liver"])
    assert liver.dice_mean > 0.85
