"""Latent ensemble sampling for a batch of 2-D windows and several targets.

For ``n`` windows, ``T`` targets and ``E`` ensemble members the denoiser sees the
``n·T·E`` pairs in batches of at most ``max_batch``; each window's image latent, and with the
torch backend its part of the denoiser's first convolution (:func:`step_denoiser`), is computed
once and reused for all its targets, members and steps. Noise for each
(slice, window position, target, member) comes from its own generator seeded from the
request seed, so results do not depend on batch sizes or on which windows share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from model.bundle.loaded import LoadedBundle
from model.bundle.config import ModelConfig
from model.diffusion.process import Denoiser, GaussianDiffusion
from model.diffusion.samplers import SamplerKind, sample

if TYPE_CHECKING:
    from model.bundle.onnx_backend import OnnxBundle

# Activations of one image-encoder or mask-decoder call: these nets work at full window
# resolution, and on CPU small, cache-sized batches were fastest per sample (4-8 windows at 128²).
DECODE_BUDGET_BYTES = 1 << 24


@dataclass(frozen=True)
class WindowKey:
    """Where a window sits: slice index and top-left corner on the model grid."""

    slice_index: int
    row: int
    col: int


def sample_seed(seed: int, key: WindowKey, target_id: int, member: int) -> int:
    """A 63-bit seed that depends only on the request seed and the sample's identity."""
    state = np.random.SeedSequence([seed, key.slice_index, key.row, key.col, target_id, member]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


@torch.no_grad()
def sample_window_probabilities(
    bundle: LoadedBundle | OnnxBundle,
    process: GaussianDiffusion,
    images: torch.Tensor,
    keys: Sequence[WindowKey],
    target_ids: Sequence[int],
    *,
    ensemble: int,
    seed: int,
    sampler: SamplerKind | str,
    eta: float = 0.0,
    max_batch: int = 256,
    decode_batch: int | None = None,
) -> torch.Tensor:
    """Per-member mask probabilities for each window and target.

    images: (n, C_window, H, W) in [0, 1] on the bundle's device (the slice, then any context slices). ``max_batch`` caps the denoiser's
    batch, ``decode_batch`` the mask decoder's (None: :func:`decode_batch_size`); neither
    changes the result.
    Returns (n, T, E, H, W) float32 probabilities (sigmoid of the decoded logits).
    """
    n, _, height, width = images.shape
    num_targets = len(target_ids)
    device = bundle.device
    # Once per window, in memory-bounded sub-batches (the image VAE works at full window resolution).
    encode_batch = encode_batch_size(bundle.config, n)
    z_image = torch.cat([bundle.encode_image(images[i : i + encode_batch].to(device)) for i in range(0, n, encode_batch)])
    denoiser, condition = step_denoiser(bundle, z_image)
    latent_shape = bundle.config.latent_shape
    # Flatten (window, target, member) pairs in a fixed order.
    pairs = [(w, k, m) for w in range(n) for k in range(num_targets) for m in range(ensemble)]
    out = torch.empty((len(pairs), height, width), dtype=torch.float32)
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    decode_batch = decode_batch or decode_batch_size(bundle.config, max_batch)
    for start in range(0, len(pairs), max_batch):
        chunk = pairs[start : start + max_batch]
        window_idx = torch.tensor([w for w, _, _ in chunk], device=device)
        ids = torch.tensor([target_ids[k] for _, k, _ in chunk], device=device, dtype=torch.long)
        generators = [
            torch.Generator(device=gen_device).manual_seed(sample_seed(seed, keys[w], target_ids[k], m))
            for w, k, m in chunk
        ]
        z0 = sample(
            process,
            denoiser,
            (len(chunk), *latent_shape),
            generator=generators,
            model_kwargs={"z_image": condition[window_idx], "target_ids": ids},
            sampler=sampler,
            eta=eta,
            device=device,
        )
        for d in range(0, len(chunk), decode_batch):
            # channels-last input: the decoder's few-channel full-resolution convs run ~1.5x faster on CPU
            logits = bundle.decode_mask(z0[d : d + decode_batch].contiguous(memory_format=torch.channels_last))
            out[start + d : start + d + logits.shape[0]] = torch.sigmoid(logits).squeeze(1).float().cpu()
    return out.view(n, num_targets, ensemble, height, width)


def step_denoiser(bundle: LoadedBundle | OnnxBundle, z_image: torch.Tensor) -> tuple[Denoiser, torch.Tensor]:
    """The denoiser to call at every sampling step and the per-window conditioning to give it as ``z_image``.

    A bundle with ``condition_features`` (torch) folds the conditioning through the U-Net's first
    convolution once per window here, and its steps run ``denoiser_features``: the demo bundle's
    conditioning is 388 of that convolution's 392 input channels, and recomputing it at every step
    for every target and member was ~30 % of the denoiser's time. Other bundles (ONNX) take z_image as is.
    """
    features = getattr(bundle, "condition_features", None)
    if features is None:
        return bundle.denoiser, z_image

    def denoiser(z_t: torch.Tensor, t: torch.Tensor, z_image: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        return bundle.denoiser_features(z_t, t, z_image, target_ids)  # z_image: the features

    return denoiser, features(z_image)


def decode_batch_size(config: ModelConfig, max_batch: int, budget_bytes: int = DECODE_BUDGET_BYTES) -> int:
    """How many masks to decode at once: the mask decoder works at full window resolution, so
    its activations (about four live (B, base_channels, H, W) float32 tensors) bound the batch."""
    height, width = config.preprocess.patch_size
    per_sample = 4 * config.mask_ae.base_channels * height * width * 4
    return max(1, min(max_batch, budget_bytes // per_sample))


def encode_batch_size(config: ModelConfig, max_batch: int, budget_bytes: int = DECODE_BUDGET_BYTES) -> int:
    """How many windows to encode at once: about four live (B, channels[0], H, W) float32 tensors."""
    height, width = config.preprocess.patch_size
    per_sample = 4 * config.image_vae.channels[0] * height * width * 4
    return max(1, min(max_batch, budget_bytes // per_sample))


def denoiser_batch_size(config: ModelConfig, requested: int, budget_bytes: int) -> int:
    """``requested`` capped so the denoiser's activations stay within ``budget_bytes``.

    A rough upper estimate per sample: the U-Net keeps (num_res_blocks + 1) skip tensors per
    level plus a few working tensors at full latent resolution, and an attention matrix per
    head at attention levels, all float32.
    """
    channels, height, width = config.latent_shape
    unet = config.denoiser
    floats = 4 * max(unet.channels[0], 2 * channels) * height * width
    for level, width_l in enumerate(unet.channels):
        tokens = (height >> level) * (width >> level)
        floats += (unet.num_res_blocks + 1) * width_l * tokens
        if unet.attention_levels[level]:
            floats += (width_l // unet.num_head_channels) * tokens * tokens
    return max(1, min(requested, budget_bytes // (4 * floats)))


def ensemble_statistics(probabilities: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance (ddof=1; 0 for a single member) over ensemble ``dim``.

    Soft statistics: each member contributes its sigmoid probability, not a thresholded
    mask, so the mean is a calibrated-looking probability and the variance measures how much
    the members disagree (at most 0.25·E/(E-1) for members at 0 and 1).
    """
    mean = probabilities.mean(dim=dim)
    if probabilities.shape[dim] < 2:
        return mean, torch.zeros_like(mean)
    return mean, probabilities.var(dim=dim, unbiased=True)


def member_mask_overlaps(probabilities: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member thresholded voxel counts and pairwise overlaps, for accumulating over chunks.

    probabilities: (N, T, E, ...) member probabilities (any trailing spatial dims).
    Returns ``voxels`` (T, E) int64, the number of voxels where member e's probability > threshold,
    and ``intersections`` (T, E, E) int64, the voxels above it in both members e and f (its
    diagonal equals ``voxels``). Counts add up over disjoint chunks, so the ensemble's per-member
    volumes and pairwise Dice need no member kept in memory after its chunk.
    """
    num_targets, ensemble = probabilities.shape[1], probabilities.shape[2]
    intersections = torch.zeros((num_targets, ensemble, ensemble), dtype=torch.int64)
    for k in range(num_targets):
        masks = (probabilities[:, k] > threshold).transpose(0, 1).reshape(ensemble, -1).to(torch.float64)
        intersections[k] = torch.round(masks @ masks.T).to(torch.int64)  # exact: float64 counts below 2**53
    return torch.diagonal(intersections, dim1=1, dim2=2).clone(), intersections
