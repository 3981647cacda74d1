"""Sampling loops with a randomised (non-zero) tiny denoiser from the random bundle."""

from __future__ import annotations

import pytest
import torch

from model.bundle.loaded import LoadedBundle
from model.diffusion.samplers import SamplerKind, randn, sample, sample_progressive


def kwargs_for(bundle: LoadedBundle, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    c, h, w = bundle.config.latent_shape
    z_image = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(100 + seed))
    return {"z_image": z_image, "target_ids": torch.full((batch,), 6, dtype=torch.long)}


def run(bundle: LoadedBundle, generator, batch: int = 2, sampler: str = "ddpm", steps: int = 3, eta: float = 0.0,
        kwargs: dict | None = None) -> torch.Tensor:
    shape = (batch, *bundle.config.latent_shape)
    with torch.no_grad():
        return sample(bundle.process(steps), bundle.denoiser, shape, generator=generator,
                      model_kwargs=kwargs or kwargs_for(bundle, batch), sampler=sampler, eta=eta)


def test_randomised_network_is_not_trivially_zero(random_bundle: LoadedBundle) -> None:
    kw = kwargs_for(random_bundle, 2)
    z = torch.randn(2, *random_bundle.config.latent_shape, generator=torch.Generator().manual_seed(0))
    out = random_bundle.denoiser(z, torch.tensor([10, 900]), **kw)
    assert out.abs().mean() > 1e-3


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_same_seed_same_sample_different_seed_different(random_bundle: LoadedBundle, sampler: str) -> None:
    a = run(random_bundle, torch.Generator().manual_seed(7), sampler=sampler, eta=0.5)
    b = run(random_bundle, torch.Generator().manual_seed(7), sampler=sampler, eta=0.5)
    c = run(random_bundle, torch.Generator().manual_seed(8), sampler=sampler, eta=0.5)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_per_element_generators_make_samples_independent_of_the_batch(random_bundle: LoadedBundle) -> None:
    kw3 = kwargs_for(random_bundle, 3)
    batch = run(random_bundle, [torch.Generator().manual_seed(s) for s in (11, 12, 13)], batch=3, kwargs=kw3)
    alone_kw = {k: v[1:2] for k, v in kw3.items()}
    alone = run(random_bundle, [torch.Generator().manual_seed(12)], batch=1, kwargs=alone_kw)
    assert torch.allclose(batch[1:2], alone, atol=1e-5)
    # and the neighbours really are different samples
    assert (batch[0] - batch[1]).abs().max() > 1e-3


def test_wrong_number_of_generators_raises() -> None:
    with pytest.raises(ValueError, match="generators"):
        randn((3, 2), [torch.Generator()] * 2, torch.device("cpu"), torch.float32)


def test_ddim_eta0_is_deterministic_given_zT(random_bundle: LoadedBundle) -> None:
    process = random_bundle.process(4)
    kw = kwargs_for(random_bundle, 2)
    z_T = torch.randn(2, *random_bundle.config.latent_shape, generator=torch.Generator().manual_seed(0))

    def loop(noise_seed: int, eta: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(noise_seed)
        z = z_T
        with torch.no_grad():
            for i in reversed(range(process.num_timesteps)):
                t = torch.full((2,), i, dtype=torch.long)
                z, _ = process.ddim_step(random_bundle.denoiser, z, t, torch.randn(z.shape, generator=g), eta, kw)
        return z

    assert torch.equal(loop(1, 0.0), loop(2, 0.0))
    assert (loop(1, 1.0) - loop(2, 1.0)).abs().max() > 1e-3


def test_ddim_eta0_with_a_perfect_model_recovers_z0() -> None:
    """DDIM with eta=0 maps z_T to the network's z0 when the network knows z0."""
    from model.diffusion.process import GaussianDiffusion
    from model.diffusion.respace import respace, space_timesteps
    from model.diffusion.schedule import make_betas

    process = respace(GaussianDiffusion(make_betas("linear", 100)), space_timesteps(100, 5))
    z0 = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(4))
    out = sample(process, lambda z, t: torch.cat([z0, torch.zeros_like(z0)], 1), z0.shape,
                 generator=torch.Generator().manual_seed(0), sampler="ddim")
    assert torch.allclose(out, z0, atol=1e-5)


def test_progressive_yields_every_step_down_to_zero(random_bundle: LoadedBundle) -> None:
    process = random_bundle.process(3)
    steps = list(sample_progressive(process, random_bundle.denoiser, (1, *random_bundle.config.latent_shape),
                                    generator=torch.Generator().manual_seed(0),
                                    model_kwargs=kwargs_for(random_bundle, 1), sampler=SamplerKind.DDIM))
    assert [s.t for s in steps] == [2, 1, 0]
    assert all(s.z.shape == (1, *random_bundle.config.latent_shape) for s in steps)
    # at t=0 the step returns the predicted z0 itself (eq. 9 with alpha_bar_prev = 1, no noise)
    assert torch.allclose(steps[-1].z, steps[-1].pred_z0, atol=1e-5)
