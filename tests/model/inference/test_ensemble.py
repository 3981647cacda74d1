from __future__ import annotations

import numpy as np
import pytest
import torch

from model.bundle.loaded import LoadedBundle
from model.inference.ensemble import WindowKey, ensemble_statistics, sample_seed, sample_window_probabilities


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 64, 64, generator=torch.Generator().manual_seed(seed))


def run(bundle: LoadedBundle, imgs: torch.Tensor, keys, *, seed: int = 0, ensemble: int = 2, max_batch: int = 256,
        targets=(6, 1)) -> torch.Tensor:
    return sample_window_probabilities(bundle, bundle.process(2), imgs, keys, list(targets), ensemble=ensemble,
                                       seed=seed, sampler="ddpm", max_batch=max_batch)


KEYS = [WindowKey(0, 0, 0), WindowKey(0, 0, 48), WindowKey(3, 16, 0)]


def test_ensemble_statistics_are_soft_mean_and_unbiased_variance() -> None:
    probs = torch.rand(2, 3, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    mean, var = ensemble_statistics(probs, dim=2)
    arr = probs.numpy()
    assert np.allclose(mean.numpy(), arr.mean(axis=2), atol=1e-6)
    assert np.allclose(var.numpy(), arr.var(axis=2, ddof=1), atol=1e-6)
    mean1, var1 = ensemble_statistics(probs[:, :, :1], dim=2)
    assert torch.equal(mean1, probs[:, :, 0]) and torch.equal(var1, torch.zeros_like(mean1))
    # members at 0 and 1: the bound 0.25 E/(E-1)
    _, extreme = ensemble_statistics(torch.tensor([0.0, 1.0, 0.0, 1.0]), dim=0)
    assert extreme.item() == pytest.approx(0.25 * 4 / 3)


def test_probabilities_shape_range_and_members_differ(random_bundle: LoadedBundle) -> None:
    out = run(random_bundle, images(3), KEYS, ensemble=3)
    assert out.shape == (3, 2, 3, 64, 64)
    assert out.min() >= 0 and out.max() <= 1
    assert (out[:, :, 0] - out[:, :, 1]).abs().max() > 1e-3  # ensemble members are different samples


def test_same_seed_same_result_different_seed_different(random_bundle: LoadedBundle) -> None:
    a = run(random_bundle, images(2), KEYS[:2], seed=5)
    b = run(random_bundle, images(2), KEYS[:2], seed=5)
    c = run(random_bundle, images(2), KEYS[:2], seed=6)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_batch_size_does_not_change_results(random_bundle: LoadedBundle) -> None:
    big = run(random_bundle, images(3), KEYS, max_batch=256)
    small = run(random_bundle, images(3), KEYS, max_batch=5)
    assert torch.allclose(big, small, atol=1e-5)
    # a window alone equals the same window among others
    alone = run(random_bundle, images(3)[1:2], KEYS[1:2], max_batch=3)
    assert torch.allclose(alone, big[1:2], atol=1e-5)


def test_noise_depends_on_the_window_key(random_bundle: LoadedBundle) -> None:
    same_image = images(1).expand(2, -1, -1, -1)
    out = run(random_bundle, same_image, KEYS[:2], ensemble=1, targets=(6,))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_sample_seed_depends_on_every_component() -> None:
    base = sample_seed(1, WindowKey(2, 3, 4), 5, 6)
    assert 0 <= base < 2**63
    variants = [
        sample_seed(2, WindowKey(2, 3, 4), 5, 6),
        sample_seed(1, WindowKey(9, 3, 4), 5, 6),
        sample_seed(1, WindowKey(2, 9, 4), 5, 6),
        sample_seed(1, WindowKey(2, 3, 9), 5, 6),
        sample_seed(1, WindowKey(2, 3, 4), 9, 6),
        sample_seed(1, WindowKey(2, 3, 4), 5, 9),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
    assert sample_seed(1, WindowKey(2, 3, 4), 5, 6) == base
