"""The conditional denoiser: MONAI's ``DiffusionModelUNet`` on concat(z_t, z_image) (z_image: the image
latent, optionally followed by the image's pixels space-to-depth, see ``image_condition``),
conditioned on the target through a class embedding added to the time embedding.

Two conditioning modes (config switch):
- ``learnt``: an embedding table, one row per vocabulary id;
- ``text``: frozen text embeddings (one vector per vocabulary id, computed offline) through a
  trainable projection, as the paper's CLIP-embedding variant.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from model.config import DenoiserConfig


class TextClassEmbedding(nn.Module):
    """ids -> projection of a frozen text-embedding table."""

    def __init__(self, table: torch.Tensor, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("table", table.float().clone(), persistent=True)
        self.proj = nn.Sequential(nn.Linear(table.shape[1], out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table[ids])


class LatentDenoiser(nn.Module):
    """``forward(z_t, t, z_image, target_ids)`` -> (B, C_out, h, w).

    z_t: (B, C_z, h, w); z_image: (B, C_image, h, w); t: (B,) original-scale timesteps; target_ids: (B,) vocabulary ids.
    C_out = C_z · out_multiplier (prediction, then variance values when the variance is learned).
    """

    def __init__(
        self,
        config: DenoiserConfig,
        *,
        latent_channels: int,
        condition_channels: int | None = None,
        num_target_ids: int,
        out_multiplier: int,
        text_embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=latent_channels + (latent_channels if condition_channels is None else condition_channels),
            out_channels=latent_channels * out_multiplier,
            channels=config.channels,
            attention_levels=config.attention_levels,
            num_res_blocks=config.num_res_blocks,
            num_head_channels=config.num_head_channels,
            norm_num_groups=config.norm_num_groups,
            num_class_embeds=num_target_ids,
            use_flash_attention=True,
        )
        time_embed_dim = config.channels[0] * 4
        if config.conditioning == "text":
            if text_embeddings is None:
                raise ValueError("conditioning='text' needs a text-embedding table (one row per vocabulary id)")
            if text_embeddings.shape != (num_target_ids, config.text_embedding_dim):
                raise ValueError(
                    f"text embeddings must be ({num_target_ids}, {config.text_embedding_dim}), got {tuple(text_embeddings.shape)}"
                )
            self.unet.class_embedding = TextClassEmbedding(text_embeddings, time_embed_dim)

    def forward(
        self, z_t: torch.Tensor, t: torch.Tensor, z_image: torch.Tensor, target_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(torch.cat([z_t, z_image], dim=1), timesteps=t, class_labels=target_ids)
