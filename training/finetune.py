"""Starting a training run from a bundle's weights (``init_from``): fine-tuning the shipped model
on new data, or continuing a finished bundle with a longer budget or a better auto-encoder.

Each stage that has no checkpoint of its own copies its network from the bundle. The network's
architecture settings must be the ones in the run's ``model`` config; anything else is a
:class:`FinetuneError` naming the setting, before any step is taken. One kind of change is
allowed: widening the image conditioning, by switching ``denoiser.image_pixels`` on, raising
``denoiser.context_slices`` and/or adding a ``denoiser.pixel_stem`` to a bundle without one. The
denoiser's first convolution then gains the new channels (new pixels come last in z_image, the
stem's features after z_image) with zero weights, so training starts from exactly the bundle's
predictions and learns how much to use the new input; a new stem starts from the run's own
(seeded) initial weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from model.bundle.loaded import LatentScale, load_bundle
from model.bundle.config import DenoiserConfig, ModelConfig
from model.errors import BundleError, UserError
from model.targets.vocabulary import Vocabulary
from training.config import TrainConfig


class FinetuneError(UserError, ValueError):
    """``init_from`` names a bundle this run cannot start from; the message says why."""


_NETWORK_OF_STAGE = {"mask-ae": "mask_ae", "image-vae": "image_vae", "diffusion": "denoiser"}
# The model settings that fix each network's shapes.
_SETTINGS_OF_STAGE = {"mask-ae": ("mask_ae",), "image-vae": ("image_vae",), "diffusion": ("denoiser", "diffusion")}
# The denoiser's first convolution, whose input channels are concat(z_t, z_image latent, pixels).
_DENOISER_INPUT_CONV = "unet.conv_in.conv.weight"


def initial_weights(
    config: TrainConfig, vocabulary: Vocabulary, stage: str, fresh: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor] | None:
    """The state dict ``stage`` starts from: ``None`` without ``init_from``, else the bundle's network.
    ``fresh``: the run's newly initialised network, whose weights a part the bundle lacks (a new pixel
    stem) starts from."""
    if config.init_from is None:
        return None
    if stage not in _NETWORK_OF_STAGE:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(_NETWORK_OF_STAGE)}")
    try:
        bundle = load_bundle(Path(config.init_from), device="cpu")
    except BundleError as exc:
        raise FinetuneError(f"init_from: {exc}") from exc
    widening = stage == "diffusion" and _widens_image_conditioning(config, bundle.config.denoiser)
    for key in _SETTINGS_OF_STAGE[stage]:
        ours, theirs = getattr(config.model, key), getattr(bundle.config, key)
        if ours != theirs:
            mine, bundled = ours.model_dump(), theirs.model_dump()
            changed = sorted(k for k in mine if mine[k] != bundled.get(k) and not (widening and k in _WIDENING))
            if not changed:
                continue
            raise FinetuneError(
                f"init_from: bundle {bundle.name} has different model.{key} settings ({', '.join(changed)}) "
                f"than this config; {stage} cannot start from its weights"
            )
    if stage == "diffusion" and bundle.vocabulary.max_id != vocabulary.max_id:
        raise FinetuneError(
            f"init_from: bundle {bundle.name} has target ids up to {bundle.vocabulary.max_id}, this run's "
            f"vocabulary up to {vocabulary.max_id}; the class-embedding tables differ"
        )
    network = getattr(bundle.networks, _NETWORK_OF_STAGE[stage])
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    if widening:
        state[_DENOISER_INPUT_CONV] = _with_zero_input_channels(state[_DENOISER_INPUT_CONV], config, bundle.config)
        if config.model.denoiser.pixel_stem and not bundle.config.denoiser.pixel_stem:
            if fresh is None:
                raise FinetuneError("init_from: adding a pixel stem needs the run's freshly initialised denoiser")
            state.update({k: v.detach().clone() for k, v in fresh.items() if k.startswith(_PIXEL_STEM)})
    return state


# Denoiser settings that only append image-conditioning channels.
_WIDENING = ("image_pixels", "context_slices", "pixel_stem")
_PIXEL_STEM = "pixel_stem."


def _widens_image_conditioning(config: TrainConfig, theirs: DenoiserConfig) -> bool:
    """The run's denoiser differs from the bundle's at most by appended image-conditioning channels."""
    ours = config.model.denoiser
    new_stem = bool(ours.pixel_stem) and not theirs.pixel_stem
    if ours.pixel_stem != theirs.pixel_stem and not new_stem:
        return False
    if (ours.image_pixels, ours.context_slices) == (theirs.image_pixels, theirs.context_slices):
        return new_stem
    if theirs.image_pixels and not ours.image_pixels:
        return False
    if theirs.pixel_stem:  # a stem sits after z_image: z_image cannot grow under it
        return False
    return ours.context_slices >= theirs.context_slices or not theirs.image_pixels



def inherited_latent_scale(config: TrainConfig, measure: Callable[[], LatentScale]) -> LatentScale:
    """The latent scale factors of a run: a factor whose auto-encoder is the ``init_from`` bundle's,
    unchanged (0 steps), is the bundle's factor, so the denoiser's inputs keep the distribution it
    was trained on; a retrained auto-encoder gets a ``measure``d factor (measured only when needed)."""
    if config.init_from is None or (config.mask_ae.steps and config.image_vae.steps):
        return measure()
    try:
        bundled = load_bundle(Path(config.init_from), device="cpu").latent_scale
    except BundleError as exc:
        raise FinetuneError(f"init_from: {exc}") from exc
    if config.mask_ae.steps == 0 and config.image_vae.steps == 0:
        return bundled
    measured = measure()
    return LatentScale(
        mask=bundled.mask if config.mask_ae.steps == 0 else measured.mask,
        image=bundled.image if config.image_vae.steps == 0 else measured.image,
    )


def _with_zero_input_channels(weight: torch.Tensor, config: TrainConfig, bundled: ModelConfig) -> torch.Tensor:
    """Zero input channels for the new pixel or context channels (which come last in z_image) and for a
    new pixel stem's features (which come after z_image)."""
    ours = config.model
    wanted = ours.denoiser_input_channels
    if weight.shape[1] != bundled.denoiser_input_channels or wanted <= weight.shape[1]:
        raise FinetuneError(
            f"init_from: the denoiser's input has {weight.shape[1]} channels, expected {bundled.denoiser_input_channels} "
            f"growing to {wanted}"
        )
    z = bundled.mask_ae.latent_channels + bundled.image_condition_channels  # z_t and the bundle's z_image
    z_new = ours.mask_ae.latent_channels + ours.image_condition_channels
    stem = weight[:, z:]  # the bundle's own stem features, if any (then z_image did not grow)
    grown = weight.new_zeros(weight.shape[0], z_new - z, *weight.shape[2:])
    new_stem = weight.new_zeros(weight.shape[0], wanted - z_new - stem.shape[1], *weight.shape[2:])
    return torch.cat([weight[:, :z], grown, stem, new_stem], dim=1)
