"""Gaussian KL and discretised likelihood terms for the variational bound (L_VLB)."""

from __future__ import annotations

import math

import torch


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), element-wise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Negative log density of a continuous Gaussian, element-wise, in nats.

    Latents are continuous (unlike 8-bit pixels), so the t=0 term of the bound is the
    continuous Gaussian likelihood rather than the discretised one of improved-diffusion.
    """
    return 0.5 * (math.log(2 * math.pi) + 2 * log_scale + ((x - mean) ** 2) * torch.exp(-2 * log_scale))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))
