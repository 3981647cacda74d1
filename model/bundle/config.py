"""Typed, frozen hyper-parameters. Everything here is stored in bundles.

Runtime environment (paths, devices, Redis) lives in ``*Settings`` elsewhere, never here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.bundle.manifest import SAMPLING_RANGES
from model.diffusion.process import LossType, MeanType, VarType
from model.diffusion.samplers import SamplerKind
from model.diffusion.schedule import ScheduleKind


class FrozenConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PreprocessConfig(FrozenConfig):
    """How a CT volume is brought to the model's grid (shared by training and inference)."""

    spacing: tuple[float, float, float] = Field((3.0, 3.0, 3.0), description="target voxel size (mm) along R, A, S")
    intensity_min: float = Field(-175.0, description="HU mapped to 0")
    intensity_max: float = Field(250.0, description="HU mapped to 1")
    patch_size: tuple[int, int] = Field((128, 128), description="2D axial window (voxels)")
    body_threshold_hu: float = Field(-500.0, description="voxels above this are body; windows without body are skipped")

    @model_validator(mode="after")
    def _check(self) -> "PreprocessConfig":
        if any(s <= 0 for s in self.spacing):
            raise ValueError("spacing must be positive")
        if self.intensity_max <= self.intensity_min:
            raise ValueError("intensity_max must exceed intensity_min")
        return self


class MaskAEConfig(FrozenConfig):
    """Vanilla (non-variational) mask auto-encoder; weight decay regularises its latent."""

    base_channels: int = Field(8, ge=1)
    latent_channels: int = Field(4, ge=1)
    downsample_levels: int = Field(3, ge=1, le=6)

    @property
    def factor(self) -> int:
        return 2**self.downsample_levels


class ImageVAEConfig(FrozenConfig):
    """MONAI ``AutoencoderKL``; len(channels) - 1 downsamplings."""

    channels: tuple[int, ...] = (16, 32, 32, 32)
    latent_channels: int = 4
    num_res_blocks: int = 1
    norm_num_groups: int = 8

    @model_validator(mode="after")
    def _check(self) -> "ImageVAEConfig":
        if len(self.channels) < 2:
            raise ValueError("image_vae.channels needs at least two levels")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError("every image_vae channel count must be divisible by norm_num_groups")
        return self

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


class DenoiserConfig(FrozenConfig):
    """Conditional denoising U-Net in latent space (MONAI ``DiffusionModelUNet``)."""

    channels: tuple[int, ...] = (32, 64, 128)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_head_channels: int = 32
    norm_num_groups: int = 16
    conditioning: Literal["learnt", "text"] = "learnt"
    text_embedding_dim: int = 384
    image_pixels: bool = Field(
        False,
        description="condition on the image window itself as well as on its latent: the window rearranged "
        "space-to-depth onto the latent grid (f² channels, scaled to [-1, 1]) is concatenated to z_image. Off in "
        "the paper's configuration; on in the CPU demo, whose 4×16×16 image latent loses small organs' contrast",
    )
    context_slices: int = Field(
        0,
        ge=0,
        le=4,
        description="through-plane context (2.5-D): the k axial slices either side of the window's slice join the "
        "pixel conditioning, k × 2 more windows of f² channels each (the image latent stays the centre slice's). "
        "Needs image_pixels",
    )

    pixel_stem: tuple[int, ...] = Field(
        (),
        description="a full-resolution convolutional stem over the window's pixels (its slice and context slices): "
        "one 3×3 convolution at full resolution, then per halving a stride-2 and a 3×3 convolution (SiLU after "
        "each), with these channel counts, down to the latent grid; its features join the denoiser's input after "
        "z_image. Needs image_pixels; one entry for full resolution plus one per halving (log2 f + 1). Empty: no "
        "stem (the space-to-depth pixels reach the U-Net's first convolution directly)",
    )

    @model_validator(mode="after")
    def _check(self) -> "DenoiserConfig":
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per channel level")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError("every channel count must be divisible by norm_num_groups")
        if self.context_slices and not self.image_pixels:
            raise ValueError("context_slices needs image_pixels: the neighbouring slices reach the denoiser as pixels")
        if self.pixel_stem and not self.image_pixels:
            raise ValueError("pixel_stem needs image_pixels: the stem reads the window's pixels from z_image")
        if any(c < 1 for c in self.pixel_stem):
            raise ValueError("pixel_stem channel counts must be positive")
        return self


class DiffusionConfig(FrozenConfig):
    num_timesteps: int = Field(1000, ge=2)
    schedule: ScheduleKind = ScheduleKind.LINEAR
    mean_type: MeanType = MeanType.START_X
    var_type: VarType = VarType.LEARNED_RANGE
    loss_type: LossType = LossType.HYBRID
    vlb_weight: float = Field(1e-3, ge=0)


class SamplingConfig(FrozenConfig):
    """Inference defaults; requests may override steps, ensemble and seed."""

    # The defaults of every entry point (CLI, API, worker); the ranges: model.bundle.manifest.check_sampling.
    steps: int = Field(10, ge=SAMPLING_RANGES["steps"][0], le=SAMPLING_RANGES["steps"][1])
    ensemble: int = Field(5, ge=SAMPLING_RANGES["ensemble"][0], le=SAMPLING_RANGES["ensemble"][1])
    sampler: SamplerKind = SamplerKind.DDPM
    eta: float = 0.0
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    max_batch: int = Field(256, ge=1, description="denoiser batch cap (windows x targets x members)")
    largest_component: bool = Field(
        False,
        description="for targets the vocabulary marks `connected`, zero the mean outside the largest 3-D connected "
        "component of mean > 0.5 (the variance is kept); requests may override it",
    )
    exclusive: bool = Field(
        False,
        description="when several `connected` targets are requested together, cap each one's mean at 1 minus the "
        "most probable other one's where that other wins the voxel (one-piece organs and main vessels never share "
        "a voxel), before largest_component; requests may override it",
    )


class ModelConfig(FrozenConfig):
    preprocess: PreprocessConfig = PreprocessConfig()
    mask_ae: MaskAEConfig = MaskAEConfig()
    image_vae: ImageVAEConfig = ImageVAEConfig()
    denoiser: DenoiserConfig = DenoiserConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    sampling: SamplingConfig = SamplingConfig()

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.mask_ae.factor != self.image_vae.factor:
            raise ValueError(
                f"mask and image latents must have the same size: f={self.mask_ae.factor} vs {self.image_vae.factor}"
            )
        h, w = self.preprocess.patch_size
        if h % self.mask_ae.factor or w % self.mask_ae.factor:
            raise ValueError(f"patch_size must be divisible by the latent factor {self.mask_ae.factor}")
        latent = h // self.mask_ae.factor
        if latent % 2 ** (len(self.denoiser.channels) - 1):
            raise ValueError("the latent size must be divisible by the U-Net's downsampling")
        stem = self.denoiser.pixel_stem
        if stem and 2 ** (len(stem) - 1) != self.image_vae.factor:
            raise ValueError(
                f"denoiser.pixel_stem needs {self.image_vae.factor.bit_length()} channel counts (full resolution, then "
                f"one per halving down to the latent factor {self.image_vae.factor}), got {len(stem)}"
            )
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C_z, H_z, W_z) of the mask latent."""
        h, w = self.preprocess.patch_size
        f = self.mask_ae.factor
        return (self.mask_ae.latent_channels, h // f, w // f)

    @property
    def image_pixel_factor(self) -> int:
        """The space-to-depth factor of the pixel conditioning (the latent factor f), 0 without it."""
        return self.image_vae.factor if self.denoiser.image_pixels else 0

    @property
    def image_window_channels(self) -> int:
        """Channels of an image window: its slice, then the ``context_slices`` neighbours (see
        :func:`model.inference.preprocessing.context_offsets`)."""
        return 1 + 2 * self.denoiser.context_slices

    @property
    def image_condition_channels(self) -> int:
        """Channels of the denoiser's image conditioning: the image latent, plus f² pixel channels per window channel."""
        return self.image_vae.latent_channels + self.image_window_channels * self.image_pixel_factor**2

    @property
    def encoded_image_channels(self) -> int:
        """Channels of a bundle's ``encode_image``: the image conditioning, then any pixel stem's features
        (computed once per window at inference)."""
        stem = self.denoiser.pixel_stem[-1] if self.denoiser.pixel_stem else 0
        return self.image_condition_channels + stem

    @property
    def denoiser_input_channels(self) -> int:
        """Channels into the U-Net's first convolution: z_t, z_image, then the pixel stem's features."""
        return self.mask_ae.latent_channels + self.encoded_image_channels

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls.model_validate(data)


def tiny_config() -> ModelConfig:
    """A seconds-fast configuration for tests: 64² windows at 4 mm, latent 4×8×8."""
    return ModelConfig(
        preprocess=PreprocessConfig(spacing=(4.0, 4.0, 4.0), patch_size=(64, 64)),
        mask_ae=MaskAEConfig(base_channels=4),
        image_vae=ImageVAEConfig(channels=(8, 16, 16, 16), norm_num_groups=4),
        denoiser=DenoiserConfig(channels=(16, 32, 32), attention_levels=(False, False, True), num_head_channels=16, norm_num_groups=8),
        sampling=SamplingConfig(steps=4, ensemble=3),
    )
