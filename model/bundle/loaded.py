"""Self-describing checkpoints: save, load strictly, and the loaded runtime object."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.bundle.manifest import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    BundleManifest,
    LatentScale,
    demo_bundle_path,
    file_sha256,
    read_manifest,
    replacing_folder,
)
from model.bundle.config import ModelConfig, tiny_config
from model.diffusion.process import GaussianDiffusion
from model.diffusion.respace import respace, sampling_timesteps
from model.diffusion.schedule import make_betas
from model.errors import BundleError
from model.nets.autoencoder import MaskAutoencoder, build_image_vae, image_condition
from model.nets.unet import LatentDenoiser
from model.targets.vocabulary import Vocabulary, default_vocabulary

__all__ = [
    "BundleInfo",
    "LoadedBundle",
    "Networks",
    "build_networks",
    "build_process",
    "demo_bundle_path",
    "load_bundle",
    "save_bundle",
    "write_random_bundle",
]


@dataclass
class Networks:
    mask_ae: MaskAutoencoder
    image_vae: torch.nn.Module
    denoiser: LatentDenoiser

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in (("mask_ae", self.mask_ae), ("image_vae", self.image_vae), ("denoiser", self.denoiser)):
            for key, value in module.state_dict().items():
                tensors[f"{prefix}.{key}"] = value.detach().cpu().contiguous()
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        for prefix, module in (("mask_ae", self.mask_ae), ("image_vae", self.image_vae), ("denoiser", self.denoiser)):
            part = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            try:
                module.load_state_dict(part, strict=True)
            except RuntimeError as exc:
                raise BundleError(f"weights do not match the bundle's config for {prefix}: {exc}") from exc
        known = ("mask_ae.", "image_vae.", "denoiser.")
        extra = [k for k in tensors if not k.startswith(known)]
        if extra:
            raise BundleError(f"unexpected tensors in weights: {', '.join(extra[:5])}")


def build_process(config: ModelConfig) -> GaussianDiffusion:
    d = config.diffusion
    return GaussianDiffusion(
        make_betas(d.schedule, d.num_timesteps),
        mean_type=d.mean_type,
        var_type=d.var_type,
        loss_type=d.loss_type,
        vlb_weight=d.vlb_weight,
    )


def build_networks(
    config: ModelConfig, vocabulary: Vocabulary, text_embeddings: torch.Tensor | None = None
) -> Networks:
    process = build_process(config)
    if config.denoiser.conditioning == "text" and text_embeddings is None:
        # Shape placeholder; real values come from the weights file or the trainer.
        text_embeddings = torch.zeros(vocabulary.max_id + 1, config.denoiser.text_embedding_dim)
    return Networks(
        mask_ae=MaskAutoencoder(config.mask_ae),
        image_vae=build_image_vae(config.image_vae),
        denoiser=LatentDenoiser(
            config.denoiser,
            latent_channels=config.mask_ae.latent_channels,
            condition_channels=config.image_condition_channels,
            num_target_ids=vocabulary.max_id + 1,
            out_multiplier=process.model_output_multiplier,
            text_embeddings=text_embeddings if config.denoiser.conditioning == "text" else None,
            pixel_input=(config.image_vae.latent_channels, config.image_pixel_factor) if config.denoiser.pixel_stem else None,
        ),
    )


class BundleInfo:
    """What every loaded bundle (torch or ONNX) derives from its manifest and config."""

    manifest: BundleManifest
    config: ModelConfig

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def vocabulary(self) -> Vocabulary:
        return self.manifest.vocabulary

    @property
    def trained_targets(self) -> tuple[str, ...]:
        return self.manifest.trained_targets

    @property
    def served_targets(self) -> tuple[str, ...]:
        """Trained targets whose left-out validation cleared the bundle's bar (all, without a validation section)."""
        return self.manifest.served_targets

    @property
    def latent_scale(self) -> LatentScale:
        return self.manifest.latent_scale

    def process(self, steps: int | None = None) -> GaussianDiffusion:
        """The diffusion process, respaced to ``steps`` (default: the bundle's sampling steps)."""
        base = build_process(self.config)
        steps = steps or self.config.sampling.steps
        if steps >= base.num_timesteps:
            return base
        return respace(base, sampling_timesteps(base.num_timesteps, steps))


@dataclass
class LoadedBundle(BundleInfo):
    """A bundle in memory, in eval mode on one device, ready to sample."""

    path: Path
    manifest: BundleManifest
    config: ModelConfig
    networks: Networks
    device: torch.device


    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C_window, H, W) image windows in [0, 1] (``ModelConfig.image_window_channels``: the slice,
        then its context slices) -> the denoiser's image conditioning (B, C, h, w), C =
        ``ModelConfig.encoded_image_channels`` (any pixel stem's features included)."""
        z_image = image_condition(
            self.networks.image_vae, image, self.latent_scale.image, pixel_factor=self.config.image_pixel_factor
        )
        return self.networks.denoiser.condition(z_image)

    @torch.no_grad()
    def decode_mask(self, z_mask: torch.Tensor) -> torch.Tensor:
        """Scaled mask latent -> (B, 1, H, W) logits."""
        return self.networks.mask_ae.decode(z_mask / self.latent_scale.mask)

    def denoiser(self, z_t: torch.Tensor, t: torch.Tensor, z_image: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        return self.networks.denoiser(z_t, t, z_image, target_ids)

    @torch.no_grad()
    def condition_features(self, z_image: torch.Tensor) -> torch.Tensor:
        """:meth:`encode_image`'s output -> its part of the denoiser's first layer (B, channels[0], h, w),
        for :meth:`denoiser_features`: computed once per window, not at every step and member."""
        return self.networks.denoiser.condition_features(z_image)

    def denoiser_features(
        self, z_t: torch.Tensor, t: torch.Tensor, features: torch.Tensor, target_ids: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`denoiser` with the conditioning as :meth:`condition_features` (same output to float rounding)."""
        return self.networks.denoiser.forward_features(z_t, t, features, target_ids)

    @property
    def backend(self) -> str:
        return "torch"


def save_bundle(
    path: str | Path,
    *,
    config: ModelConfig,
    vocabulary: Vocabulary,
    networks: Networks,
    latent_scale: LatentScale,
    trained_targets: tuple[str, ...],
    name: str,
    version: str,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle folder atomically (a temp folder renamed into place)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    unknown = [n for n in trained_targets if n not in vocabulary.names()]
    if unknown:
        raise BundleError(f"trained targets not in the vocabulary: {', '.join(unknown)}")
    with replacing_folder(target) as tmp:
        weights = tmp / WEIGHTS_NAME
        save_file(networks.state_dict(), str(weights), metadata={"format": "latentseg-bundle"})
        manifest = BundleManifest(
            name=name,
            version=version,
            config=config.to_dict(),
            vocabulary=vocabulary,
            trained_targets=tuple(trained_targets),
            latent_scale=latent_scale,
            weights_sha256=file_sha256(weights),
            provenance={"created": datetime.now(UTC).isoformat(timespec="seconds"), **(provenance or {})},
        )
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    return target


def resolve_bundle_path(path: str | Path | None) -> Path:
    """Explicit path, else ``$LATENTSEG_BUNDLE``, else the shipped demo bundle."""
    if path is not None:
        return Path(path)
    env = os.environ.get("LATENTSEG_BUNDLE")
    return Path(env) if env else demo_bundle_path()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def read_manifest_and_config(folder: Path) -> tuple[BundleManifest, ModelConfig]:
    """``folder``'s manifest (read strictly) and its model config; a :class:`BundleError` when the
    config does not parse in this version of latentseg."""
    manifest = read_manifest(folder)
    try:
        config = ModelConfig.from_dict(manifest.config)
    except ValueError as exc:
        raise BundleError(f"{folder}: config is not valid for this version of latentseg: {exc}") from exc
    return manifest, config


def load_bundle(path: str | Path | None = None, device: str | torch.device | None = None) -> LoadedBundle:
    """Load a bundle strictly: manifest schema, vocabulary hash, weights hash and every tensor must match."""
    folder = resolve_bundle_path(path)
    manifest, config = read_manifest_and_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise BundleError(f"{folder} has no {WEIGHTS_NAME}")
    if file_sha256(weights) != manifest.weights_sha256:
        raise BundleError(f"{weights} does not match the sha256 in {MANIFEST_NAME} (corrupted or replaced)")
    tensors = load_file(str(weights))
    try:
        networks = build_networks(config, manifest.vocabulary, tensors.get("denoiser.unet.class_embedding.table"))
    except ValueError as exc:
        raise BundleError(f"{folder}: cannot build the networks its config describes: {exc}") from exc
    networks.load_state_dict(tensors)
    dev = torch.device(device) if device is not None else default_device()
    for module in (networks.mask_ae, networks.image_vae, networks.denoiser):
        module.to(dev).eval().requires_grad_(False)
    return LoadedBundle(path=folder, manifest=manifest, config=config, networks=networks, device=dev)


def randomise_zero_parameters(module: torch.nn.Module, generator: torch.Generator, std: float = 0.05) -> None:
    """Give zero-initialised tensors (MONAI zero-inits output convs) small random values,
    so an untrained network's output depends on its inputs."""
    with torch.no_grad():
        for param in module.parameters():
            if param.numel() and bool((param == 0).all()) and param.ndim > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def write_random_bundle(path: str | Path, seed: int = 0, config: ModelConfig | None = None) -> Path:
    """An untrained bundle (tiny config by default) for tests and smoke runs; outputs are not meaningful."""
    config = config or tiny_config()
    vocabulary = default_vocabulary()
    torch.manual_seed(seed)  # nn.Module initialisers use the global RNG; seed it for a reproducible bundle
    generator = torch.Generator().manual_seed(seed)
    text_embeddings = None
    if config.denoiser.conditioning == "text":
        # A random stand-in for the frozen text table (build_networks' placeholder is all zeros,
        # which would make every target condition identically).
        text_embeddings = torch.randn(
            vocabulary.max_id + 1, config.denoiser.text_embedding_dim, generator=generator
        )
    networks = build_networks(config, vocabulary, text_embeddings)
    for module in (networks.mask_ae, networks.image_vae, networks.denoiser):
        randomise_zero_parameters(module, generator)
    return save_bundle(
        path,
        config=config,
        vocabulary=vocabulary,
        networks=networks,
        latent_scale=LatentScale(mask=1.0, image=1.0),
        trained_targets=vocabulary.names(),
        name="random-tiny",
        version="0.0.0",
        provenance={"trained": False, "seed": seed},
    )
