"""Closed-form checks of the Gaussian diffusion process (paper §2.2, eqs. 6-9).

Reference quantities are recomputed here from the betas, never read from the process.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from model.diffusion.process import GaussianDiffusion, LossType, MeanType, VarType

SHAPE = (4, 3, 5, 5)


def alphas_cumprod_of(betas: np.ndarray) -> np.ndarray:
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - float(b)
        out.append(prod)
    return np.array(out)


def col(values: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_q_sample_is_the_closed_form(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50)
    abar = alphas_cumprod_of(betas50)
    z0 = torch.randn(SHAPE, generator=gen(1))
    noise = torch.randn(SHAPE, generator=gen(2))
    t = torch.tensor([0, 7, 30, 49])
    expected = col(np.sqrt(abar), t) * z0 + col(np.sqrt(1 - abar), t) * noise
    assert torch.allclose(process.q_sample(z0, t, noise), expected, atol=1e-6)
    mean, var = process.q_mean_variance(z0, t)
    assert torch.allclose(mean, col(np.sqrt(abar), t) * z0, atol=1e-6)
    assert torch.allclose(var.flatten(), torch.tensor(1 - abar[t.numpy()], dtype=torch.float32))


def test_q_sample_moments_by_monte_carlo(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50)
    abar = alphas_cumprod_of(betas50)
    n = 200_000
    t = torch.tensor([3, 25, 49])
    z0 = torch.tensor([1.5, -0.7, 2.0]).view(3, 1, 1, 1).expand(3, 1, 1, n)
    z_t = process.q_sample(z0, t, torch.randn(3, 1, 1, n, generator=gen(3)))
    for row, step in enumerate(t.tolist()):
        sample = z_t[row].double().flatten()
        sd = math.sqrt(1 - abar[step])
        assert sample.mean().item() == pytest.approx(math.sqrt(abar[step]) * z0[row, 0, 0, 0].item(), abs=5 * sd / math.sqrt(n))
        assert sample.var().item() == pytest.approx(1 - abar[step], rel=0.02)


def test_posterior_is_eq9_with_variance_beta_tilde(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50)
    abar = alphas_cumprod_of(betas50)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    alphas = 1 - betas50
    z0 = torch.randn(SHAPE, generator=gen(4))
    z_t = torch.randn(SHAPE, generator=gen(5))
    t = torch.tensor([0, 1, 20, 49])
    # Eq. 9: mu~_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) z0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) z_t
    coef_z0 = np.sqrt(abar_prev) * betas50 / (1 - abar)
    coef_zt = np.sqrt(alphas) * (1 - abar_prev) / (1 - abar)
    expected_mean = col(coef_z0, t) * z0 + col(coef_zt, t) * z_t
    post = process.q_posterior(z0, z_t, t)
    assert torch.allclose(post.mean, expected_mean, atol=1e-5)
    beta_tilde = betas50 * (1 - abar_prev) / (1 - abar)
    assert torch.allclose(post.variance.flatten(), torch.tensor(beta_tilde[t.numpy()], dtype=torch.float32))
    # t=0 has zero variance; its log is clipped to the t=1 value, the rest is exact.
    assert torch.allclose(post.log_variance.flatten()[1:], torch.tensor(np.log(beta_tilde[t.numpy()[1:]]), dtype=torch.float32))
    assert post.log_variance.flatten()[0].item() == pytest.approx(math.log(beta_tilde[1]), rel=1e-6)


def test_posterior_is_bayes_on_gaussians(betas50: np.ndarray) -> None:
    """q(z_{t-1}|z_t,z0) ∝ q(z_t|z_{t-1}) q(z_{t-1}|z0): product of two Gaussians in z_{t-1}."""
    process = GaussianDiffusion(betas50)
    abar = alphas_cumprod_of(betas50)
    for t in (1, 10, 49):
        z0, z_t = 0.8, -1.3
        prior_mean, prior_var = math.sqrt(abar[t - 1]) * z0, 1 - abar[t - 1]
        # q(z_t | z_{t-1}) = N(sqrt(alpha_t) z_{t-1}, beta_t) as a likelihood in z_{t-1}
        a, beta = math.sqrt(1 - betas50[t]), betas50[t]
        precision = 1 / prior_var + a * a / beta
        mean = (prior_mean / prior_var + a * z_t / beta) / precision
        post = process.q_posterior(torch.full((1, 1, 1, 1), z0), torch.full((1, 1, 1, 1), z_t), torch.tensor([t]))
        assert post.mean.item() == pytest.approx(mean, rel=1e-5, abs=1e-6)
        assert post.variance.item() == pytest.approx(1 / precision, rel=1e-5)


def _perfect_start_x(z0: torch.Tensor, var_values: float = 0.0):
    def model(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([z0, torch.full_like(z0, var_values)], dim=1)

    return model


def test_perfect_z0_model_gives_the_true_posterior_mean(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50, mean_type=MeanType.START_X)
    z0 = torch.randn(SHAPE, generator=gen(6))
    t = torch.tensor([0, 5, 30, 49])
    z_t = process.q_sample(z0, t, torch.randn(SHAPE, generator=gen(7)))
    pred = process.p_mean_variance(_perfect_start_x(z0), z_t, t)
    assert torch.allclose(pred.pred_z0, z0)
    assert torch.allclose(pred.mean, process.q_posterior(z0, z_t, t).mean, atol=1e-6)


def test_epsilon_mode_is_consistent(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50, mean_type=MeanType.EPSILON)
    z0 = torch.randn(SHAPE, generator=gen(8))
    noise = torch.randn(SHAPE, generator=gen(9))
    t = torch.tensor([0, 11, 33, 49])
    z_t = process.q_sample(z0, t, noise)
    assert torch.allclose(process.predict_eps_from_z0(z_t, t, z0), noise, atol=1e-3)
    round_trip = process.predict_z0_from_eps(z_t, t, process.predict_eps_from_z0(z_t, t, z0))
    assert torch.allclose(round_trip, z0, atol=1e-4)

    def perfect_eps(z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return torch.cat([noise, torch.zeros_like(noise)], dim=1)

    pred = process.p_mean_variance(perfect_eps, z_t, t)
    assert torch.allclose(pred.pred_z0, z0, atol=1e-3)
    assert torch.allclose(pred.mean, process.q_posterior(z0, z_t, t).mean, atol=1e-3)


def test_learned_range_interpolates_between_posterior_variance_and_beta(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50)
    abar = alphas_cumprod_of(betas50)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta_tilde = betas50 * (1 - abar_prev) / (1 - abar)
    z0 = torch.randn(SHAPE, generator=gen(10))
    t = torch.tensor([1, 2, 25, 49])
    z_t = torch.randn(SHAPE, generator=gen(11))
    low = process.p_mean_variance(_perfect_start_x(z0, -1.0), z_t, t)
    high = process.p_mean_variance(_perfect_start_x(z0, 1.0), z_t, t)
    mid = process.p_mean_variance(_perfect_start_x(z0, 0.0), z_t, t)
    expected_low = col(beta_tilde, t).expand(SHAPE)
    expected_high = col(betas50, t).expand(SHAPE)
    assert torch.allclose(low.variance, expected_low, rtol=1e-5)
    assert torch.allclose(high.variance, expected_high, rtol=1e-5)
    # v = 0 is the geometric mean (interpolation in log space)
    assert torch.allclose(mid.variance, torch.sqrt(expected_low * expected_high), rtol=1e-5)


def test_fixed_variances(betas50: np.ndarray) -> None:
    z = torch.zeros(2, 1, 2, 2)
    t = torch.tensor([3, 40])
    small = GaussianDiffusion(betas50, var_type=VarType.FIXED_SMALL, loss_type=LossType.MSE)
    large = GaussianDiffusion(betas50, var_type=VarType.FIXED_LARGE, loss_type=LossType.MSE)
    assert torch.allclose(small.p_mean_variance(lambda z_t, s: z_t, z, t).variance[:, 0, 0, 0],
                          torch.tensor(small.posterior_variance[[3, 40]], dtype=torch.float32))
    assert torch.allclose(large.p_mean_variance(lambda z_t, s: z_t, z, t).variance[:, 0, 0, 0],
                          torch.tensor(betas50[[3, 40]], dtype=torch.float32))


def test_learned_range_needs_twice_the_channels(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50)
    with pytest.raises(ValueError, match="output channels"):
        process.p_mean_variance(lambda z, s: z, torch.zeros(1, 2, 3, 3), torch.tensor([1]))


class MeanAndVarianceNet(nn.Module):
    """Separate parameters for the prediction channels and the variance channels."""

    def __init__(self) -> None:
        super().__init__()
        self.mean_scale = nn.Parameter(torch.tensor(0.7))
        self.var_value = nn.Parameter(torch.tensor(0.2))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mean_scale * z_t, torch.tanh(self.var_value) * torch.ones_like(z_t)], dim=1)


def test_hybrid_loss_is_mse_plus_lambda_T_vb(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50, vlb_weight=1e-3)
    z0 = torch.randn(SHAPE, generator=gen(12))
    noise = torch.randn(SHAPE, generator=gen(13))
    t = torch.tensor([0, 4, 20, 49])
    terms = process.training_losses(MeanAndVarianceNet(), z0, t, noise)
    assert terms["loss"].shape == (4,)
    assert torch.allclose(terms["loss"], terms["mse"] + 1e-3 * 50 * terms["vb"])
    assert (terms["vb"][1:] != 0).all()


def test_training_vb_leaves_out_the_t0_decoder_term(betas50: np.ndarray) -> None:
    """The t=0 NLL (variance ~beta_1) would dominate and distort the t~0 prediction: not trained."""
    process = GaussianDiffusion(betas50)
    z0 = torch.randn(SHAPE, generator=gen(16))
    noise = torch.randn(SHAPE, generator=gen(17))
    t = torch.tensor([0, 0, 3, 9])
    terms = process.training_losses(MeanAndVarianceNet(), z0, t, noise)
    assert (terms["vb"][:2] == 0).all()
    assert (terms["vb"][2:] > 0).all()
    assert torch.allclose(terms["loss"][:2], terms["mse"][:2])


def test_vb_trains_only_the_variance(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50)
    z0 = torch.randn(SHAPE, generator=gen(14))
    noise = torch.randn(SHAPE, generator=gen(15))
    t = torch.tensor([1, 4, 20, 49])
    net = MeanAndVarianceNet()
    process.training_losses(net, z0, t, noise)["vb"].sum().backward()
    assert net.var_value.grad is not None and net.var_value.grad.abs().item() > 0
    assert net.mean_scale.grad is None or net.mean_scale.grad.item() == 0.0
    # Without the stop-gradient the same term does reach the mean: the check above can fail.
    net.zero_grad()
    z_t = process.q_sample(z0, t, noise)
    process.vb_term(net(z_t, t), z0, z_t, t).sum().backward()
    assert net.mean_scale.grad.abs().item() > 0


def test_mse_target_is_z0_for_start_x_and_noise_for_epsilon(betas50: np.ndarray) -> None:
    z0 = torch.randn(SHAPE, generator=gen(16))
    noise = torch.randn(SHAPE, generator=gen(17))
    t = torch.tensor([0, 9, 27, 49])

    def returns(x: torch.Tensor):
        return lambda z_t, s: torch.cat([x, torch.zeros_like(x)], dim=1)

    start_x = GaussianDiffusion(betas50, mean_type=MeanType.START_X)
    eps = GaussianDiffusion(betas50, mean_type=MeanType.EPSILON)
    assert torch.equal(start_x.training_losses(returns(z0), z0, t, noise)["mse"], torch.zeros(4))
    assert (start_x.training_losses(returns(noise), z0, t, noise)["mse"] > 0).all()
    assert torch.equal(eps.training_losses(returns(noise), z0, t, noise)["mse"], torch.zeros(4))
    assert (eps.training_losses(returns(z0), z0, t, noise)["mse"] > 0).all()
    expected = ((z0 - 0.5 * noise) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(start_x.training_losses(returns(0.5 * noise), z0, t, noise)["mse"], expected)


def test_mse_loss_type_has_no_vb(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50, var_type=VarType.FIXED_SMALL, loss_type=LossType.MSE)
    z0 = torch.randn(SHAPE, generator=gen(18))
    terms = process.training_losses(lambda z, s: z, z0, torch.tensor([1, 2, 3, 4]), torch.randn(SHAPE, generator=gen(19)))
    assert torch.equal(terms["loss"], terms["mse"])


def test_vb_at_t0_is_gaussian_nll_and_kl_elsewhere(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50)
    abar = alphas_cumprod_of(betas50)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta_tilde = betas50 * (1 - abar_prev) / (1 - abar)
    z0 = torch.randn(SHAPE, generator=gen(20)).double()
    z_t = torch.randn(SHAPE, generator=gen(21)).double()
    pred_z0 = torch.randn(SHAPE, generator=gen(22)).double()
    v = 0.3
    output = torch.cat([pred_z0, torch.full_like(pred_z0, v)], dim=1).float()
    t = torch.tensor([0, 0, 12, 49])
    vb = process.vb_term(output, z0.float(), z_t.float(), t).double()
    frac = (v + 1) / 2
    for row, step in enumerate(t.tolist()):
        min_log = math.log(beta_tilde[max(step, 1)])
        logvar = frac * math.log(betas50[step]) + (1 - frac) * min_log
        if step == 0:
            # p(z0 | z1) = N(pred_z0, sigma^2): eq. 9 at t=0 gives the predicted z0 itself.
            nll = 0.5 * (math.log(2 * math.pi) + logvar + (z0[row] - pred_z0[row]) ** 2 / math.exp(logvar))
            expected = nll.mean().item() / math.log(2)
        else:
            c1 = math.sqrt(abar_prev[step]) * betas50[step] / (1 - abar[step])
            c2 = math.sqrt(1 - betas50[step]) * (1 - abar_prev[step]) / (1 - abar[step])
            true_mean = c1 * z0[row] + c2 * z_t[row]
            pred_mean = c1 * pred_z0[row] + c2 * z_t[row]
            true_var, pred_var = beta_tilde[step], math.exp(logvar)
            kl = 0.5 * (math.log(pred_var / true_var) + true_var / pred_var + (true_mean - pred_mean) ** 2 / pred_var - 1)
            expected = kl.mean().item() / math.log(2)
        assert vb[row].item() == pytest.approx(expected, rel=1e-4)


def test_invalid_construction_raises(betas50: np.ndarray) -> None:
    with pytest.raises(ValueError, match="learned_range"):
        GaussianDiffusion(betas50, var_type=VarType.FIXED_SMALL, loss_type=LossType.HYBRID)
    with pytest.raises(ValueError):
        GaussianDiffusion(np.array([0.0, 0.1]))
    with pytest.raises(ValueError):
        GaussianDiffusion(np.ones((2, 2)) * 0.1)


def test_p_sample_adds_no_noise_at_t0(betas50: np.ndarray) -> None:
    process = GaussianDiffusion(betas50)
    z0 = torch.randn(SHAPE, generator=gen(23))
    z_t = torch.randn(SHAPE, generator=gen(24))
    noise = torch.randn(SHAPE, generator=gen(25))
    t = torch.tensor([0, 0, 5, 5])
    z_prev, pred = process.p_sample(_perfect_start_x(z0), z_t, t, noise)
    mean = process.q_posterior(z0, z_t, t).mean
    assert torch.allclose(z_prev[:2], z0[:2], atol=1e-6)  # eq. 9 at t=0 is pred_z0
    std = torch.exp(0.5 * process.p_mean_variance(_perfect_start_x(z0), z_t, t).log_variance[2:])
    assert torch.allclose(z_prev[2:], mean[2:] + std * noise[2:], atol=1e-6)
