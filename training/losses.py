"""Stage-1 losses: the mask auto-encoder's BCE + Dice (eq. 1-2) and the VAE's ELBO (eq. 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss (eq. 2) per batch, on sigmoid probabilities."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def mask_ae_loss(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """L_BCE + L_DICE; the λ||w||² term is AdamW's decoupled weight decay."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = dice_loss(logits, target)
    return {"loss": bce + dice, "bce": bce, "dice": dice}


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma²) || N(0, I)), summed over latent dims, averaged over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(1).mean()


def vae_loss(
    recon: torch.Tensor,
    image: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    kl_weight: float,
    perceptual: torch.Tensor | None = None,
    perceptual_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """-ELBO with an L1 reconstruction likelihood (Laplace), + β·KL, + α·LPIPS when available."""
    rec = F.l1_loss(recon, image)
    kl = kl_to_standard_normal(mu, sigma)
    loss = rec + kl_weight * kl
    terms = {"rec": rec, "kl": kl}
    if perceptual is not None and perceptual_weight > 0:
        loss = loss + perceptual_weight * perceptual
        terms["perceptual"] = perceptual
    terms["loss"] = loss
    return terms
