from __future__ import annotations

import numpy as np
import pytest
import torch

from model.diffusion.timestep_sampling import LossSecondMomentSampler, UniformSampler


def fill(sampler: LossSecondMomentSampler, losses_of_t, rounds: int) -> None:
    T = sampler.num_timesteps
    for r in range(rounds):
        t = torch.arange(T)
        sampler.update(t, torch.tensor([losses_of_t(s, r) for s in range(T)], dtype=torch.float64))


def test_uniform_sampler_weights_are_one() -> None:
    t, w = UniformSampler(20).sample(64, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 20
    assert torch.equal(w, torch.ones(64))


def test_uniform_until_every_step_has_full_history() -> None:
    sampler = LossSecondMomentSampler(6, history=3)
    fill(sampler, lambda s, r: 10.0 * (s + 1), rounds=2)
    # One step one short of a full history: still uniform.
    sampler.update(torch.arange(5), torch.full((5,), 7.0))
    assert not sampler.warmed_up
    assert np.array_equal(sampler.weights(), np.ones(6))
    _, w = sampler.sample(100, torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(100))
    sampler.update(torch.tensor([5]), torch.tensor([7.0]))
    assert sampler.warmed_up
    assert not np.allclose(sampler.weights(), sampler.weights().mean())


def test_probabilities_are_sqrt_of_mean_square_over_the_last_losses() -> None:
    T, H, u = 4, 3, 0.01
    sampler = LossSecondMomentSampler(T, history=H, uniform_prob=u)
    history = {s: [] for s in range(T)}
    rng = np.random.default_rng(0)
    for _ in range(5):  # more rounds than the history: old values must drop out
        for s in range(T):
            loss = float(rng.uniform(0.1, 3.0)) * (s + 1)
            history[s].append(loss)
            sampler.update(torch.tensor([s]), torch.tensor([loss]))
    rms = np.array([np.sqrt(np.mean(np.square(history[s][-H:]))) for s in range(T)])
    expected = (1 - u) * rms / rms.sum() + u / T
    assert np.allclose(sampler.weights(), expected, rtol=1e-12)
    assert sampler.weights().sum() == pytest.approx(1.0)


def test_importance_weights_make_the_estimate_unbiased() -> None:
    T = 10
    sampler = LossSecondMomentSampler(T, history=4, uniform_prob=0.05)
    loss_of_t = np.array([0.2 + 3.0 * np.exp(-s / 2) for s in range(T)])
    fill(sampler, lambda s, r: loss_of_t[s] * (1.0 + 0.1 * r), rounds=4)
    assert sampler.warmed_up
    t, w = sampler.sample(200_000, torch.Generator().manual_seed(1))
    p = sampler.weights()
    assert np.allclose(w.numpy()[:50], 1.0 / (T * p[t.numpy()[:50]]), rtol=1e-6)
    # Importance sampling: E_p[w(t) L(t)] = mean_t L(t), while plain E_p[L] is biased upwards.
    estimate = float((w.double() * torch.from_numpy(loss_of_t)[t]).mean())
    assert estimate == pytest.approx(loss_of_t.mean(), rel=0.01)
    biased = float(torch.from_numpy(loss_of_t)[t].mean())
    assert biased > 1.2 * loss_of_t.mean()


def test_deterministic_for_a_fixed_generator_without_distributed() -> None:
    def draws(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        sampler = LossSecondMomentSampler(8, history=2)
        fill(sampler, lambda s, r: float(s + 1 + r), rounds=2)
        return sampler.sample(32, torch.Generator().manual_seed(seed))

    a, b, c = draws(3), draws(3), draws(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.distributed.is_available() or not torch.distributed.is_initialized()


def test_state_dict_round_trip() -> None:
    sampler = LossSecondMomentSampler(5, history=2)
    fill(sampler, lambda s, r: float(s * s + r + 1), rounds=2)
    copy = LossSecondMomentSampler(5, history=2)
    copy.load_state_dict(sampler.state_dict())
    assert copy.warmed_up and np.array_equal(copy.weights(), sampler.weights())
