"""The Gaussian diffusion process in latent space, as a plain object.

Modelled on improved-diffusion's ``GaussianDiffusion``: it holds no weights, precomputes
its schedule in float64, and takes the denoising network as an argument of every call.
The network is called as ``model(z_t, t_model, **model_kwargs)`` where ``t_model`` is the
timestep on the *original* scale (see :mod:`model.diffusion.respace`) and must return
``(B, C, H, W)`` (fixed variance) or ``(B, 2C, H, W)`` (learned range: prediction then
variance-interpolation values in [-1, 1]).

Shapes: ``z_t``, ``z0`` are ``(B, C, H, W)``; ``t`` is an int64 tensor of shape ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from model.diffusion.losses import gaussian_nll, mean_flat, normal_kl

Denoiser = Callable[..., torch.Tensor]


class MeanType(StrEnum):
    """What the network predicts. The paper predicts the clean latent z0 (``start_x``)."""

    START_X = "start_x"
    EPSILON = "epsilon"


class VarType(StrEnum):
    LEARNED_RANGE = "learned_range"
    FIXED_SMALL = "fixed_small"
    FIXED_LARGE = "fixed_large"


class LossType(StrEnum):
    """``hybrid`` is the paper's L_MSE + λ·L_VLB (needs a learned variance)."""

    MSE = "mse"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class PosteriorStats:
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor


@dataclass(frozen=True)
class ModelPrediction:
    """p(z_{t-1} | z_t) as predicted by the network, plus its z0 estimate."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_z0: torch.Tensor
    pred_eps: torch.Tensor


def extract(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``arr[t]`` as float32 on t's device, shaped (B, 1, ..., 1) for broadcasting."""
    out = torch.from_numpy(arr).to(device=t.device)[t].float()
    return out.view(-1, *([1] * (ndim - 1)))


class GaussianDiffusion:
    """Forward process q, reverse process p_θ and the training loss, for a fixed schedule.

    ``timestep_map[i]`` is the original timestep of this process's step ``i``; it is the
    identity unless the process was respaced.
    """

    def __init__(
        self,
        betas: np.ndarray,
        *,
        mean_type: MeanType | str = MeanType.START_X,
        var_type: VarType | str = VarType.LEARNED_RANGE,
        loss_type: LossType | str = LossType.HYBRID,
        vlb_weight: float = 1e-3,
        timestep_map: np.ndarray | None = None,
        original_num_timesteps: int | None = None,
    ) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.mean_type = MeanType(mean_type)
        self.var_type = VarType(var_type)
        self.loss_type = LossType(loss_type)
        if self.loss_type is LossType.HYBRID and self.var_type is not VarType.LEARNED_RANGE:
            raise ValueError("the hybrid loss trains the variance: it needs var_type=learned_range")
        self.vlb_weight = float(vlb_weight)
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        self.timestep_map = (
            np.arange(self.num_timesteps, dtype=np.int64) if timestep_map is None else np.asarray(timestep_map, np.int64)
        )
        self.original_num_timesteps = original_num_timesteps or self.num_timesteps

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t=0: clip the log to the next value (to beta_0 for a
        # single-step process, which has no next value).
        self._variance_at_zero = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(
            np.append(self._variance_at_zero, self.posterior_variance[1:])
        )
        # Eq. 9 of the paper: mu = coef1 * z0 + coef2 * z_t.
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, z0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(z_t | z0) (eq. 6)."""
        mean = extract(self.sqrt_alphas_cumprod, t, z0.ndim) * z0
        variance = extract(1.0 - self.alphas_cumprod, t, z0.ndim)
        return mean, variance

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw z_t ~ q(z_t | z0) with the given standard-normal ``noise``."""
        return (
            extract(self.sqrt_alphas_cumprod, t, z0.ndim) * z0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, z0.ndim) * noise
        )

    def q_posterior(self, z0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> PosteriorStats:
        """q(z_{t-1} | z_t, z0): mean by eq. 9, variance β̃_t."""
        mean = extract(self.posterior_mean_coef1, t, z_t.ndim) * z0 + extract(self.posterior_mean_coef2, t, z_t.ndim) * z_t
        variance = extract(self.posterior_variance, t, z_t.ndim)
        log_variance = extract(self.posterior_log_variance_clipped, t, z_t.ndim)
        return PosteriorStats(mean, variance, log_variance)

    # ------------------------------------------------------------------ reverse process
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The original-scale timesteps the network sees for this process's steps ``t``."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    def predict_z0_from_eps(self, z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, z_t.ndim) * z_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, z_t.ndim) * eps
        )

    def predict_eps_from_z0(self, z_t: torch.Tensor, t: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        return (extract(self.sqrt_recip_alphas_cumprod, t, z_t.ndim) * z_t - z0) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, z_t.ndim
        )

    @property
    def model_output_multiplier(self) -> int:
        """Output channels of the network per latent channel (2 with a learned variance)."""
        return 2 if self.var_type is VarType.LEARNED_RANGE else 1

    def interpret(self, model_output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> ModelPrediction:
        """Turn raw network output into p(z_{t-1} | z_t) and the z0 / ε estimates."""
        channels = z_t.shape[1]
        if self.var_type is VarType.LEARNED_RANGE:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(f"learned variance needs {2 * channels} output channels, got {model_output.shape[1]}")
            model_output, var_values = torch.split(model_output, channels, dim=1)
            min_log = extract(self.posterior_log_variance_clipped, t, z_t.ndim)
            max_log = extract(np.log(self.betas), t, z_t.ndim)
            # [-1, 1] -> [0, 1], clamped: the variance stays between the posterior variance and
            # beta_t. Unclamped, an uncertain network extrapolates far above beta_t and ancestral
            # sampling drowns in noise (measured: Dice 0.15 vs 0.75 for DDIM on the demo model).
            frac = (var_values.clamp(-1.0, 1.0) + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            if self.var_type is VarType.FIXED_LARGE:
                var_arr = np.append(self._variance_at_zero, self.betas[1:])
            else:
                var_arr = self.posterior_variance
            variance = extract(var_arr, t, z_t.ndim).expand_as(z_t)
            log_variance = extract(
                np.log(np.append(self._variance_at_zero, self.betas[1:]))
                if self.var_type is VarType.FIXED_LARGE
                else self.posterior_log_variance_clipped,
                t,
                z_t.ndim,
            ).expand_as(z_t)
        if self.mean_type is MeanType.START_X:
            pred_z0 = model_output
            pred_eps = self.predict_eps_from_z0(z_t, t, pred_z0)
        else:
            pred_eps = model_output
            pred_z0 = self.predict_z0_from_eps(z_t, t, pred_eps)
        mean = self.q_posterior(pred_z0, z_t, t).mean
        return ModelPrediction(mean, variance, log_variance, pred_z0, pred_eps)

    def p_mean_variance(
        self, model: Denoiser, z_t: torch.Tensor, t: torch.Tensor, model_kwargs: Mapping[str, Any] | None = None
    ) -> ModelPrediction:
        output = model(z_t, self.model_timesteps(t), **(model_kwargs or {}))
        return self.interpret(output, z_t, t)

    def p_sample(
        self,
        model: Denoiser,
        z_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step z_t -> z_{t-1}. Returns ``(z_prev, pred_z0)``; no noise at t=0."""
        pred = self.p_mean_variance(model, z_t, t, model_kwargs)
        nonzero = (t != 0).float().view(-1, *([1] * (z_t.ndim - 1)))
        z_prev = pred.mean + nonzero * torch.exp(0.5 * pred.log_variance) * noise
        return z_prev, pred.pred_z0

    def ddim_step(
        self,
        model: Denoiser,
        z_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        eta: float = 0.0,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step (Song et al., eq. 12); ``eta=0`` is deterministic given z_t."""
        pred = self.p_mean_variance(model, z_t, t, model_kwargs)
        eps = self.predict_eps_from_z0(z_t, t, pred.pred_z0)
        alpha_bar = extract(self.alphas_cumprod, t, z_t.ndim)
        alpha_bar_prev = extract(self.alphas_cumprod_prev, t, z_t.ndim)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean = pred.pred_z0 * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        nonzero = (t != 0).float().view(-1, *([1] * (z_t.ndim - 1)))
        return mean + nonzero * sigma * noise, pred.pred_z0

    # ------------------------------------------------------------------ training
    def training_losses(
        self,
        model: Denoiser,
        z0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses ``{"loss", "mse", "vb"}``, each of shape (B,).

        ``mse`` is L_MSE on the network's target (z0 for the paper). With the hybrid loss,
        ``vb`` is the single-step term L_t of the variational bound in bits per dim for t > 0
        (0 at t = 0, see below), with the mean's gradient stopped so it trains only the
        variance; it is scaled by λ·T so that ``loss = L_MSE + λ · L_VLB`` in expectation over
        uniform t.
        """
        z_t = self.q_sample(z0, t, noise)
        output = model(z_t, self.model_timesteps(t), **(model_kwargs or {}))
        channels = z0.shape[1]
        prediction = output[:, :channels]
        target = z0 if self.mean_type is MeanType.START_X else noise
        mse = mean_flat((target - prediction) ** 2)
        terms: dict[str, torch.Tensor] = {"mse": mse}
        if self.loss_type is LossType.HYBRID:
            frozen = torch.cat([prediction.detach(), output[:, channels:]], dim=1)
            # The t=0 decoder term -log p(z0|z1) is left out of training: for continuous latents
            # with a posterior variance near beta_1 it is dominated by err^2/1e-4, its gradient
            # (which reaches the shared backbone through the variance head) wrecks the t≈0
            # prediction that sampling ends with, and it would also make the importance sampler
            # spend most draws on t=0. The mask decoder D_x models the final likelihood instead.
            vb = torch.where(t == 0, torch.zeros_like(mse), self.vb_term(frozen, z0, z_t, t))
            terms["vb"] = vb
            terms["loss"] = mse + self.vlb_weight * self.num_timesteps * vb
        else:
            terms["vb"] = torch.zeros_like(mse)
            terms["loss"] = mse
        return terms

    def vb_term(self, model_output: torch.Tensor, z0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """L_t in bits per dim: KL(q(z_{t-1}|z_t,z0) || p_θ) for t>0, -log p_θ(z0|z1) at t=0."""
        true = self.q_posterior(z0, z_t, t)
        pred = self.interpret(model_output, z_t, t)
        kl = mean_flat(normal_kl(true.mean, true.log_variance, pred.mean, pred.log_variance)) / math.log(2.0)
        nll = mean_flat(gaussian_nll(z0, pred.mean, 0.5 * pred.log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)
