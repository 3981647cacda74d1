"""Stage-1 networks: the mask auto-encoder (E_x, D_x) and the image VAE (E_y, D_y)."""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn
from torch.nn import functional as F

from model.bundle.config import ImageVAEConfig, MaskAEConfig


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(4, channels), num_channels=channels)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class MaskAutoencoder(nn.Module):
    """Vanilla convolutional auto-encoder for binary masks (paper §2.1): no KL term.

    ``encode``: (B, 1, H, W) mask in {0, 1} -> (B, C_z, H/f, W/f) latent.
    ``decode``: latent -> (B, 1, H, W) logits (apply a sigmoid for probabilities).
    """

    def __init__(self, config: MaskAEConfig) -> None:
        super().__init__()
        b = config.base_channels
        widths = [b * min(2**i, 4) for i in range(config.downsample_levels + 1)]
        # Residual blocks only below full resolution: full-resolution convolutions with few
        # channels dominate CPU time and add little for binary masks.
        down: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, padding=1)]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            down += [nn.SiLU(), nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), _ResBlock(c_out)]
        down += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], config.latent_channels, 1)]
        self.encoder = nn.Sequential(*down)
        up: list[nn.Module] = [nn.Conv2d(config.latent_channels, widths[-1], 3, padding=1), _ResBlock(widths[-1])]
        for level, (c_in, c_out) in enumerate(zip(widths[:0:-1], widths[-2::-1], strict=True)):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
            if level < config.downsample_levels - 1:
                up.append(_ResBlock(c_out))
        up += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], 1, 3, padding=1)]
        self.decoder = nn.Sequential(*up)

    def encode(self, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(mask)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(mask))


def build_image_vae(config: ImageVAEConfig) -> AutoencoderKL:
    """MONAI's KL auto-encoder for 2-D CT windows scaled to [0, 1]; attention off (CPU-friendly)."""
    return AutoencoderKL(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=config.channels,
        latent_channels=config.latent_channels,
        num_res_blocks=config.num_res_blocks,
        attention_levels=(False,) * len(config.channels),
        norm_num_groups=config.norm_num_groups,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


def encode_image_mean(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
    """The posterior mean of q(z_y | y): the deterministic conditioning latent, (B, C_z, h, w)."""
    h = vae.encoder(image)
    return vae.quant_conv_mu(h)


def image_condition(vae: AutoencoderKL, image: torch.Tensor, scale: float, *, pixel_factor: int = 0) -> torch.Tensor:
    """The denoiser's image conditioning z_image: the scaled posterior mean of the window's own slice
    (channel 0), then (``pixel_factor`` > 0, see ``ModelConfig.image_pixel_factor``) every channel of the
    window (its slice and any context slices) rearranged space-to-depth onto the latent grid and mapped
    from [0, 1] to [-1, 1]."""
    z = encode_image_mean(vae, image[:, :1]) * scale
    if not pixel_factor:
        return z
    return torch.cat([z, F.pixel_unshuffle(image * 2.0 - 1.0, pixel_factor).to(z.dtype)], dim=1)
