from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.bundle.loaded import load_bundle, write_random_bundle
from model.bundle.config import ModelConfig
from training.evaluation.ceiling import mask_ae_ceiling, round_trip_dice
from training.data import prepare_case, read_dataset

DEMO_BUNDLE = Path(__file__).resolve().parents[3] / "model" / "bundles" / "demo"


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


def test_grid_ceiling_is_what_the_spacing_costs(tmp_path: Path) -> None:
    from model.bundle.config import PreprocessConfig
    from model.targets.vocabulary import default_vocabulary
    from training.evaluation.ceiling import grid_ceiling
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    # One phantom at 3 mm (the small test phantoms are 6 mm: any coarser grid would be the same grid).
    data = write_phantom_dataset(tmp_path / "fine", 1, 3, PhantomSpec(shape=(128, 128, 48), spacing=(3.0, 3.0, 3.0)))
    vocabulary = default_vocabulary()
    same = {r.target: r for r in grid_ceiling(PreprocessConfig(spacing=(3.0, 3.0, 3.0)), data, vocabulary)}
    coarse = {r.target: r for r in grid_ceiling(PreprocessConfig(spacing=(9.0, 9.0, 9.0)), data, vocabulary)}
    assert set(coarse) == set(same) and {"liver", "spleen", "kidney_left", "gallbladder"} <= set(coarse)
    for name in ("liver", "spleen", "kidney_left", "kidney_right"):
        assert same[name].dice_mean > 0.97  # (almost) the phantom's own grid: little is lost
        assert coarse[name].dice_mean < same[name].dice_mean  # a coarser grid loses more
    # ... and more of a small organ than of a big one.
    assert coarse["liver"].dice_mean > coarse["gallbladder"].dice_mean
    only = grid_ceiling(PreprocessConfig(), data, vocabulary, targets=["liver"])
    assert [(r.target, r.cases) for r in only] == [("liver", 1)]
