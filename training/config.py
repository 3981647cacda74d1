"""Typed training configuration, read from YAML or TOML and validated."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from model.bundle.config import FrozenConfig, ModelConfig
from model.errors import UserError
from training.augmentation.augment import AugmentConfig


class StageConfig(FrozenConfig):
    steps: int = Field(
        1000, ge=0, description="optimizer steps (upper bound); 0 keeps the init_from bundle's network as it is"
    )
    max_minutes: float | None = Field(None, gt=0, description="stop earlier after this wall time")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: half-cosine decay from lr to lr·lr_min_fraction over `steps`"
    )
    lr_min_fraction: float = Field(0.1, ge=0, le=1, description="final lr / lr for the cosine schedule")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 to lr over these first steps")


def learning_rate(stage: StageConfig, step: int) -> float:
    """The stage's learning rate for optimizer step ``step`` (0-based): warm-up, then the schedule."""
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    if stage.lr_schedule == "constant":
        return stage.lr
    span = max(stage.steps - stage.warmup_steps, 1)
    progress = min(max(step - stage.warmup_steps, 0) / span, 1.0)
    floor = stage.lr * stage.lr_min_fraction
    return floor + (stage.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MaskAEStage(StageConfig):
    weight_decay: float = 1e-5  # the paper's λ for ||w||² (decoupled, AdamW)


class ImageVAEStage(StageConfig):
    kl_weight: float = Field(1e-6, ge=0, description="β of the ELBO")
    perceptual_weight: float = Field(0.0, ge=0, description="α; needs perceptual_weights")
    perceptual_weights: Path | None = Field(None, description="local LPIPS/VGG weights; none can be downloaded")


class DiffusionStage(StageConfig):
    lr: float = 2e-4
    ema_decay: float = Field(0.999, ge=0, lt=1)
    timestep_sampler: Literal["importance", "uniform"] = "importance"
    scale_batches: int = Field(8, ge=1, description="batches used to measure latent scale factors")
    encoder_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="precision of the frozen auto-encoders' forward pass on CPU (bfloat16: ~4x faster image "
        "encoding where the CPU has bf16 instructions, AVX512-BF16 or AMX; elsewhere float32 is used with a "
        "warning, as emulated bf16 is ~10x slower; CUDA runs the whole step in bf16 autocast anyway)",
    )


class TrainConfig(FrozenConfig):
    data: tuple[Path, ...] = Field(..., min_length=1, description="dataset folders (MSD, nnU-Net v2 or plain)")
    targets: tuple[str, ...] | None = Field(
        None, description="train only these targets (names or synonyms); the data's other targets count as not annotated"
    )
    exclude_cases: tuple[str, ...] = Field(
        (), description="case names (label file name without extension) left out of training, e.g. a validation patient"
    )
    cache_dir: Path | None = None
    out: Path = Path("runs/latest")
    bundle_name: str = "latentseg"
    bundle_version: str = "0.1.0"
    seed: int = 0
    device: str | None = None
    foreground_prob: float = Field(0.7, ge=0, le=1)
    negative_prob: float = Field(
        0.0, ge=0, le=1,
        description="near-miss negatives: patches at a target's place on slices just beyond its extent, empty mask "
        "(training/data.py PatchSampler); taken from the uniform share, so foreground_prob + negative_prob <= 1",
    )
    negative_margin_mm: float = Field(60.0, gt=0, description="how far beyond a target's extent near-miss slices lie")
    dataset_weights: dict[str, float] | None = Field(None, description="dataset name -> sampling weight (default uniform)")
    text_embeddings: Path | None = Field(None, description=".npy table (max_id+1, dim) for conditioning='text'")
    init_from: Path | None = Field(
        None,
        description="bundle to fine-tune: a stage that starts without a checkpoint starts from this bundle's "
        "weights for its network (its architecture settings must match `model`)",
    )
    augment: AugmentConfig = Field(AugmentConfig(), description="patch augmentation (off unless enabled)")
    model: ModelConfig = ModelConfig()
    mask_ae: MaskAEStage = MaskAEStage()
    image_vae: ImageVAEStage = ImageVAEStage()
    diffusion: DiffusionStage = DiffusionStage()

    @model_validator(mode="after")
    def _sampling_shares_fit(self) -> TrainConfig:
        if self.foreground_prob + self.negative_prob > 1.0 + 1e-9:
            raise ValueError(
                f"foreground_prob ({self.foreground_prob}) + negative_prob ({self.negative_prob}) exceeds 1"
            )
        return self

    @model_validator(mode="after")
    def _zero_steps_need_a_bundle(self) -> TrainConfig:
        if self.init_from is None:
            idle = [name for name in ("mask_ae", "image_vae", "diffusion") if getattr(self, name).steps == 0]
            if idle:
                raise ValueError(f"{', '.join(f'{n}.steps' for n in idle)} = 0 needs init_from (a bundle to take the network from)")
        return self


class ConfigError(UserError, ValueError):
    """A training config file cannot be read or validated; the message says where."""


def _one_line(exc: Exception) -> str:
    """YAML/TOML errors as one line: the problem and where it is."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "config"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file; relative paths (data, out,
    cache_dir, text_embeddings, init_from, image_vae.perceptual_weights) are resolved against the config
    file's folder. Every problem is a :class:`ConfigError` with a one-line message."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    kind = "TOML" if path.suffix == ".toml" else "YAML"
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {kind}: {_one_line(exc)}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a {kind} mapping of settings (data: [...], out: ...), got {type(raw).__name__}")
    for key, value in (overrides or {}).items():  # a mapping override (diffusion: {steps: N}) updates that section
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    for key in ("cache_dir", "out", "text_embeddings", "init_from"):
        if raw.get(key) and not Path(raw[key]).is_absolute():
            raw[key] = str((path.parent / raw[key]).resolve())
    image_vae = raw.get("image_vae")
    if isinstance(image_vae, dict) and image_vae.get("perceptual_weights"):
        weights = Path(image_vae["perceptual_weights"])
        raw["image_vae"] = {**image_vae, "perceptual_weights": str(weights if weights.is_absolute() else (path.parent / weights).resolve())}
    data = raw.get("data", [])
    if isinstance(data, (str, Path)):
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise ConfigError(f"{path}: data: expected a list of dataset folders")
    raw["data"] = [str(d if Path(d).is_absolute() else (path.parent / d).resolve()) for d in data]
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_validation_message(exc)}") from exc
