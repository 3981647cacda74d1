from __future__ import annotations

import numpy as np
import pytest
import torch

from model.diffusion.process import GaussianDiffusion
from model.diffusion.respace import respace, space_timesteps
from model.diffusion.samplers import sample
from model.diffusion.schedule import make_betas


def test_ddim_spec_uses_a_constant_stride() -> None:
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(100, "ddim25") == list(range(0, 100, 4))
    with pytest.raises(ValueError, match="constant stride"):
        space_timesteps(10, "ddim7")


def test_count_spec_spans_both_ends() -> None:
    steps = space_timesteps(1000, 10)
    assert len(steps) == 10 and steps[0] == 0 and steps[-1] == 999
    assert steps == sorted(steps)
    assert space_timesteps(1000, "10") == steps
    assert space_timesteps(1000, 1) == [999]


@pytest.mark.parametrize("count", range(1, 38))
def test_every_count_gives_that_many_distinct_steps(count: int) -> None:
    steps = space_timesteps(37, count)
    assert len(set(steps)) == count and all(0 <= s < 37 for s in steps)
    if count >= 2:
        assert steps[0] == 0 and steps[-1] == 36


@pytest.mark.parametrize("bad", [0, -3, 51, "ddim0", "ddim51", "zero"])
def test_invalid_counts_raise(bad: int | str) -> None:
    with pytest.raises(ValueError):
        space_timesteps(50, bad)


def test_respaced_process_equals_original_on_kept_steps() -> None:
    base = GaussianDiffusion(make_betas("linear", 200))
    kept = space_timesteps(200, 7)
    spaced = respace(base, kept)
    assert spaced.num_timesteps == 7
    assert list(spaced.timestep_map) == kept
    assert spaced.original_num_timesteps == 200
    assert np.allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    z0 = torch.randn(7, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(7, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    new_t = torch.arange(7)
    old_t = torch.tensor(kept)
    assert torch.allclose(spaced.q_sample(z0, new_t, noise), base.q_sample(z0, old_t, noise), atol=1e-6)
    assert torch.equal(spaced.model_timesteps(new_t), old_t)


def test_network_sees_original_timesteps_while_sampling() -> None:
    base = GaussianDiffusion(make_betas("linear", 100))
    spaced = respace(base, space_timesteps(100, "ddim5"))
    seen: list[list[int]] = []

    def model(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.tolist())
        return torch.cat([0.5 * z, torch.zeros_like(z)], dim=1)

    sample(spaced, model, (2, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert seen == [[s, s] for s in (80, 60, 40, 20, 0)]


def test_single_step_process_samples() -> None:
    base = GaussianDiffusion(make_betas("linear", 1000))
    one = respace(base, space_timesteps(1000, 1))
    target = torch.full((1, 1, 2, 2), 0.25)
    out = sample(one, lambda z, t: torch.cat([target, torch.zeros_like(z)], dim=1), (1, 1, 2, 2),
                 generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-5)


def test_respace_rejects_out_of_range_steps() -> None:
    base = GaussianDiffusion(make_betas("linear", 10))
    with pytest.raises(ValueError):
        respace(base, [])
    with pytest.raises(ValueError):
        respace(base, [0, 10])


def test_sampling_timesteps_start_at_pure_noise_and_skip_t0() -> None:
    from model.diffusion.respace import sampling_timesteps

    for steps in (1, 2, 5, 10, 50):
        kept = sampling_timesteps(1000, steps)
        assert len(kept) == steps
        assert kept[-1] == 999
        assert kept == sorted(set(kept))
        assert steps == 1 or kept[0] > 0
    assert sampling_timesteps(1000, 10)[0] == 50
    assert len(sampling_timesteps(20, 20)) == 20


def test_learned_variance_is_clamped_to_its_range() -> None:
    import numpy as np
    import torch

    from model.diffusion.process import GaussianDiffusion
    from model.diffusion.schedule import make_betas

    process = GaussianDiffusion(make_betas("linear", 100))
    z_t = torch.zeros(2, 1, 2, 2)
    t = torch.tensor([10, 50])
    out = torch.cat([torch.zeros_like(z_t), torch.full_like(z_t, 25.0)], dim=1)
    pred = process.interpret(out, z_t, t)
    assert torch.allclose(pred.variance[:, 0, 0, 0], torch.tensor(process.betas[[10, 50]], dtype=torch.float32))
    out = torch.cat([torch.zeros_like(z_t), torch.full_like(z_t, -9.0)], dim=1)
    pred = process.interpret(out, z_t, t)
    assert torch.allclose(pred.log_variance[:, 0, 0, 0], torch.tensor(process.posterior_log_variance_clipped[[10, 50]], dtype=torch.float32))
    assert np.isfinite(pred.variance.numpy()).all()
