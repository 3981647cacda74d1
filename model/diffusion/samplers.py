"""Sampling loops as generators: each yields every step, the caller keeps what it needs.

Randomness comes only from explicit ``torch.Generator`` objects. Pass one generator for
the whole batch, or one per batch element: with per-element generators a sample does not
depend on which other samples share its batch (batching never changes results).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from model.diffusion.process import Denoiser, GaussianDiffusion

Generators = torch.Generator | Sequence[torch.Generator]


class SamplerKind(StrEnum):
    DDPM = "ddpm"
    DDIM = "ddim"


@dataclass(frozen=True)
class SampleStep:
    """State after one reverse step: ``t`` is the step just taken (this process's index)."""

    t: int
    z: torch.Tensor
    pred_z0: torch.Tensor


def randn(shape: Sequence[int], generators: Generators, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard-normal noise of ``shape`` = (B, ...), drawn per element if given B generators."""
    if isinstance(generators, torch.Generator):
        return torch.randn(tuple(shape), generator=generators, device=generators.device, dtype=dtype).to(device)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}")
    return torch.stack(
        [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generators]
    ).to(device)


def sample_progressive(
    process: GaussianDiffusion,
    model: Denoiser,
    shape: Sequence[int],
    *,
    generator: Generators,
    model_kwargs: Mapping[str, Any] | None = None,
    sampler: SamplerKind | str = SamplerKind.DDPM,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Iterator[SampleStep]:
    """Run the reverse process from z_T ~ N(0, I), yielding after each of the T steps.

    ``sampler="ddpm"`` is ancestral sampling with the (learned) variance Σ_θ; ``"ddim"``
    uses the DDIM update with ``eta`` (0 = deterministic given z_T).
    """
    sampler = SamplerKind(sampler)
    device = torch.device(device)
    z = randn(shape, generator, device, dtype)
    for i in reversed(range(process.num_timesteps)):
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        noise = randn(shape, generator, device, dtype) if i > 0 else torch.zeros_like(z)
        if sampler is SamplerKind.DDPM:
            z, pred_z0 = process.p_sample(model, z, t, noise, model_kwargs)
        else:
            z, pred_z0 = process.ddim_step(model, z, t, noise, eta, model_kwargs)
        yield SampleStep(t=i, z=z, pred_z0=pred_z0)


def sample(
    process: GaussianDiffusion,
    model: Denoiser,
    shape: Sequence[int],
    *,
    generator: Generators,
    model_kwargs: Mapping[str, Any] | None = None,
    sampler: SamplerKind | str = SamplerKind.DDPM,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The final z0 of :func:`sample_progressive`."""
    final: SampleStep | None = None
    for final in sample_progressive(
        process, model, shape, generator=generator, model_kwargs=model_kwargs,
        sampler=sampler, eta=eta, device=device, dtype=dtype,
    ):
        pass
    assert final is not None  # num_timesteps >= 1
    return final.z
