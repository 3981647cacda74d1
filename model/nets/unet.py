"""The conditional denoiser: MONAI's ``DiffusionModelUNet`` on concat(z_t, z_image) (z_image: the image
latent, optionally followed by the image's pixels space-to-depth, see ``image_condition``),
conditioned on the target through a class embedding added to the time embedding. With a pixel stem
(``denoiser.pixel_stem``), full-resolution convolutions over the window's pixels (recovered from
z_image's space-to-depth channels) add learnt features on the latent grid after z_image.

Two conditioning modes (config switch):
- ``learnt``: an embedding table, one row per vocabulary id;
- ``text``: frozen text embeddings (one vector per vocabulary id, computed offline) through a
  trainable projection, as the paper's CLIP-embedding variant.

Sampling split: the U-Net's first convolution is linear in its input channels, so on
concat(z_t, c) it equals conv(z_t; W_z) + conv(c; W_c) + bias. The conditioning's part
(:meth:`LatentDenoiser.condition_features`, c = z_image and any stem features: 388 of the demo
bundle's 392 input channels) does not change over sampling steps or ensemble members; inference
computes it once per window and each step runs :meth:`LatentDenoiser.forward_features`, whose
first convolution sees only z_t's channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from model.bundle.config import DenoiserConfig


class TextClassEmbedding(nn.Module):
    """ids -> projection of a frozen text-embedding table."""

    def __init__(self, table: torch.Tensor, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("table", table.float().clone(), persistent=True)
        self.proj = nn.Sequential(nn.Linear(table.shape[1], out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table[ids])


class PixelStem(nn.Module):
    """(B, C_window, H, W) pixels -> (B, channels[-1], H / 2^(n-1), W / 2^(n-1)) features: a 3×3 convolution at
    full resolution, then per halving a stride-2 and a 3×3 convolution, SiLU after each."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU()]
        self.layers = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels)


class LatentDenoiser(nn.Module):
    """``forward(z_t, t, z_image, target_ids)`` -> (B, C_out, h, w).

    z_t: (B, C_z, h, w); z_image: (B, C_image, h, w), or with a stem also (B, C_image + C_stem, h, w) from
    :meth:`condition`; t: (B,) original-scale timesteps; target_ids: (B,) vocabulary ids.
    C_out = C_z · out_multiplier (prediction, then variance values when the variance is learned).
    With ``config.pixel_stem``, ``pixel_input`` = (image-latent channels, space-to-depth factor) says where
    z_image's pixel channels start and how to put them back to full resolution for the stem.
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
        pixel_input: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        condition = latent_channels if condition_channels is None else condition_channels
        self.pixel_stem: PixelStem | None = None
        self._pixel_input = pixel_input
        stem_channels = 0
        if config.pixel_stem:
            if pixel_input is None:
                raise ValueError("a pixel stem needs pixel_input: (image-latent channels, space-to-depth factor)")
            image_latent, factor = pixel_input
            window_channels = (condition - image_latent) // factor**2
            if window_channels < 1 or image_latent + window_channels * factor**2 != condition:
                raise ValueError(f"z_image of {condition} channels has no pixels after {image_latent} latent channels at factor {factor}")
            self.pixel_stem = PixelStem(window_channels, config.pixel_stem)
            stem_channels = config.pixel_stem[-1]
        self._conditioned_channels = condition + stem_channels
        self._latent_channels = latent_channels
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=latent_channels + condition + stem_channels,
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
        return self.unet(torch.cat([z_t, self.condition(z_image)], dim=1), timesteps=t, class_labels=target_ids)

    def condition(self, z_image: torch.Tensor) -> torch.Tensor:
        """z_image with the pixel stem's features appended (as is without a stem, or when they already are):
        inference computes them once per window (``LoadedBundle.encode_image``), not at every step."""
        if self.pixel_stem is None or self._pixel_input is None or z_image.shape[1] == self._conditioned_channels:
            return z_image
        image_latent, factor = self._pixel_input
        pixels = F.pixel_shuffle(z_image[:, image_latent:], factor)
        return torch.cat([z_image, self.pixel_stem(pixels).to(z_image.dtype)], dim=1)

    def condition_features(self, z_image: torch.Tensor) -> torch.Tensor:
        """The U-Net's first convolution over the conditioning alone, bias included: (B, channels[0], h, w).

        z_image as :meth:`forward` takes it (with or without the stem's features). The result replaces
        z_image in :meth:`forward_features`; it depends only on the window, so sampling computes it
        once per window rather than at every step for every target and member."""
        conv = self._conv_in
        weight = conv.weight[:, self._latent_channels :]
        condition = self.condition(z_image).to(weight.dtype)
        return F.conv2d(condition, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def forward_features(
        self, z_t: torch.Tensor, t: torch.Tensor, features: torch.Tensor, target_ids: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`forward` with the conditioning given as :meth:`condition_features` (same output up to
        float rounding): the first convolution runs over z_t's channels only."""
        conv = self._conv_in
        weight = conv.weight[:, : self._latent_channels]
        h = F.conv2d(z_t, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups) + features
        return self._unet_after_conv_in(h, t, target_ids)

    @property
    def _conv_in(self) -> nn.Conv2d:
        conv = self.unet.conv_in.conv
        assert isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros"
        return conv

    def _unet_after_conv_in(self, h: torch.Tensor, t: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """``DiffusionModelUNet.forward`` (MONAI 1.6; no cross-attention context, no ControlNet
        residuals) from the first convolution's output ``h`` on; tests check it against the U-Net itself."""
        unet = self.unet
        emb = unet.time_embed(get_timestep_embedding(t, unet.block_out_channels[0]).to(dtype=h.dtype))
        emb = emb + unet.class_embedding(target_ids).to(dtype=h.dtype)
        skips: list[torch.Tensor] = [h]
        for block in unet.down_blocks:
            h, residuals = block(hidden_states=h, temb=emb, context=None)
            skips.extend(residuals)
        h = unet.middle_block(hidden_states=h, temb=emb, context=None)
        for block in unet.up_blocks:
            count = len(block.resnets)
            h = block(hidden_states=h, res_hidden_states_list=skips[-count:], temb=emb, context=None)
            skips = skips[:-count]
        return unet.out(h)
