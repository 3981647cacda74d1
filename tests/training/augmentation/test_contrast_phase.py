"""training.augmentation.contrast_phase: labelled vessels and organs move to another phase's HU, texture and the rest stay."""

from __future__ import annotations

import numpy as np

from model.targets.vocabulary import default_vocabulary
from training.augmentation.contrast_phase import PHASES, ContrastPhaseAugmenter
from training.data import PatchSampler, PreparedCase

HU_MIN, HU_MAX = -175.0, 250.0
VOCAB = default_vocabulary()
AORTA, KIDNEY, STOMACH = (VOCAB.get(n).id for n in ("aorta", "kidney_left", "stomach"))


def _scaled(hu: np.ndarray) -> np.ndarray:
    return ((np.clip(hu, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)).astype(np.float32)


def _unenhanced_case(depth: int = 6, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z) scaled, bits): fat background, an unenhanced aorta (40 HU) and kidney (30 HU) with
    texture, and a stomach of fluid (10 HU), each labelled in the bits."""
    rng = np.random.default_rng(0)
    hu = np.full((size, size, depth), -100.0) + rng.normal(0, 8, (size, size, depth))
    bits = np.zeros(hu.shape, np.uint64)
    regions = {AORTA: (slice(10, 22), slice(10, 22), 40.0), KIDNEY: (slice(30, 50), slice(8, 24), 30.0),
               STOMACH: (slice(30, 56), slice(36, 58), 10.0)}
    for target, (xs, ys, value) in regions.items():
        hu[xs, ys] = value + rng.normal(0, 10, hu[xs, ys].shape)
        bits[xs, ys] |= np.uint64(1) << np.uint64(target)
    return _scaled(hu), bits


def _hu(augmenter: ContrastPhaseAugmenter, scaled: np.ndarray) -> np.ndarray:
    return np.asarray(augmenter.to_hu(scaled))


def test_case_medians_are_measured_on_the_labelled_structures() -> None:
    image, bits = _unenhanced_case()
    augmenter = ContrastPhaseAugmenter(VOCAB, HU_MIN, HU_MAX, prob=1.0)
    medians = augmenter.case_medians(image, bits)
    assert set(medians) == {AORTA, KIDNEY}  # the stomach's content does not enhance: not a phase structure
    assert abs(medians[AORTA] - 40) < 3 and abs(medians[KIDNEY] - 30) < 3


def test_each_draw_moves_structures_to_one_phase_and_keeps_texture_and_the_rest() -> None:
    image, bits = _unenhanced_case()
    window, window_bits = np.moveaxis(image[:, :, 1:4], 2, 0), np.moveaxis(bits[:, :, 1:4], 2, 0)
    augmenter = ContrastPhaseAugmenter(VOCAB, HU_MIN, HU_MAX, prob=1.0)
    medians = augmenter.case_medians(image, bits)
    aorta_hu = []
    inner_aorta = (slice(None), slice(13, 19), slice(13, 19))  # away from the smoothed edge
    for seed in range(40):
        out = augmenter(window, window_bits, medians, seed)
        assert out.shape == window.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        shift = _hu(augmenter, out[inner_aorta]) - _hu(augmenter, window[inner_aorta])
        unclipped = out[inner_aorta] < 1.0
        if unclipped.sum() > 10:
            assert np.ptp(shift[unclipped]) < 1.0  # one offset for the whole structure: its texture is kept
        aorta = float(np.median(_hu(augmenter, out[inner_aorta])))
        assert min(p["aorta"][0] for p in PHASES.values()) - 5 <= aorta <= HU_MAX, seed
        aorta_hu.append(aorta)
        # The stomach and the background far from any structure are untouched.
        assert np.array_equal(out[:, 33:53, 40:56], window[:, 33:53, 40:56])
        assert np.array_equal(out[:, 56:, :], window[:, 56:, :])
    assert min(aorta_hu) < 60 and max(aorta_hu) > 150  # unenhanced and enhanced draws both occur


def test_probability_zero_and_unlabelled_cases_leave_the_image_and_seeds_repeat() -> None:
    image, bits = _unenhanced_case()
    window, window_bits = np.moveaxis(image[:, :, :3], 2, 0), np.moveaxis(bits[:, :, :3], 2, 0)
    off = ContrastPhaseAugmenter(VOCAB, HU_MIN, HU_MAX, prob=0.0)
    assert off(window, window_bits, off.case_medians(image, bits), 3) is window
    on = ContrastPhaseAugmenter(VOCAB, HU_MIN, HU_MAX, prob=1.0)
    assert on(window, window_bits, {}, 3) is window  # no enhancing structure labelled
    medians = on.case_medians(image, bits)
    assert np.array_equal(on(window, window_bits, medians, 5), on(window, window_bits, medians, 5))
    assert not np.array_equal(on(window, window_bits, medians, 5), on(window, window_bits, medians, 6))


def test_the_patch_sampler_re_enhances_every_context_slice_and_keeps_the_mask() -> None:
    image, bits = _unenhanced_case(depth=8)
    case = PreparedCase("synthetic", "case", image, bits, (AORTA, KIDNEY, STOMACH))
    kwargs = dict(foreground_prob=1.0, seed=3, context_slices=1)
    plain = PatchSampler({"synthetic": [case]}, (32, 32), **kwargs)
    augmenter = ContrastPhaseAugmenter(VOCAB, HU_MIN, HU_MAX, prob=1.0)
    enhanced = PatchSampler({"synthetic": [case]}, (32, 32), contrast=augmenter, **kwargs)
    changed = 0
    for _ in range(12):
        a_image, a_mask, a_target = plain.example()
        b_image, b_mask, b_target = enhanced.example()
        assert a_target == b_target and np.array_equal(a_mask, b_mask)  # same patch, same label
        diff = np.abs(b_image - a_image).reshape(b_image.shape[0], -1).max(axis=1)
        if diff.max() > 0.05:
            changed += 1
            assert (diff > 0.05).all()  # the slice and its context slices move together
        plain.rng.integers(2**63)  # keep the two samplers' streams aligned (the augmenter draws one seed)
    assert changed >= 6
