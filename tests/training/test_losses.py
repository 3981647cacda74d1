"""training.losses against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import dice_loss, kl_to_standard_normal, mask_ae_loss, vae_loss


def test_dice_loss_closed_form() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1  # 8 voxels
    big = 50.0
    perfect = (target * 2 - 1) * big
    assert float(dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    half = torch.full_like(target, -big)
    half[..., 0, :] = big  # 4 of the 8 voxels, no false positives
    expected = 1 - (2 * 4 + 1) / (4 + 8 + 1)
    assert float(dice_loss(half, target)) == pytest.approx(expected, abs=1e-5)


def test_dice_loss_is_per_sample_and_an_empty_mask_needs_an_empty_prediction() -> None:
    target = torch.zeros(2, 1, 4, 4)
    target[0, ..., :2, :] = 1
    logits = (target * 2 - 1) * 50.0
    assert float(dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-6)  # sample 1 empty and predicted empty
    logits[1] = 50.0  # sample 1 predicts 16 voxels where there are none
    expected = (0.0 + (1 - 1 / (16 + 1))) / 2
    assert float(dice_loss(logits, target)) == pytest.approx(expected, abs=1e-5)


def test_mask_ae_loss_is_bce_plus_dice() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=generator)
    target = (torch.rand(3, 1, 8, 8, generator=generator) > 0.5).float()
    terms = mask_ae_loss(logits, target)
    bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), target)
    assert float(terms["bce"]) == pytest.approx(float(bce), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(float(terms["bce"] + terms["dice"]), rel=1e-6)


def test_kl_closed_form() -> None:
    mu = torch.zeros(2, 3, 2, 2)
    sigma = torch.ones(2, 3, 2, 2)
    assert float(kl_to_standard_normal(mu, sigma)) == pytest.approx(0.0, abs=1e-6)
    mu[0] = 1.0  # 12 dims with 0.5 * mu² each; sample 1 stays at 0
    sigma[1] = 2.0  # 12 dims with 0.5 * (4 - log 4 - 1)
    expected = (12 * 0.5 + 12 * 0.5 * (4 - math.log(4) - 1)) / 2
    assert float(kl_to_standard_normal(mu, sigma)) == pytest.approx(expected, rel=1e-5)


def test_vae_loss_weights_and_optional_perceptual_term() -> None:
    image = torch.zeros(2, 1, 4, 4)
    recon = torch.full_like(image, 0.25)
    mu, sigma = torch.ones(2, 2, 1, 1), torch.ones(2, 2, 1, 1)  # KL = 0.5 * 2 per sample
    terms = vae_loss(recon, image, mu, sigma, kl_weight=0.1)
    assert float(terms["rec"]) == pytest.approx(0.25)
    assert float(terms["kl"]) == pytest.approx(1.0)
    assert float(terms["loss"]) == pytest.approx(0.25 + 0.1)
    assert "perceptual" not in terms
    with_p = vae_loss(recon, image, mu, sigma, 0.1, perceptual=torch.tensor(2.0), perceptual_weight=0.5)
    assert float(with_p["loss"]) == pytest.approx(0.35 + 1.0)
    off = vae_loss(recon, image, mu, sigma, 0.1, perceptual=torch.tensor(2.0), perceptual_weight=0.0)
    assert float(off["loss"]) == pytest.approx(0.35)
