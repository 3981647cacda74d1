"""Typed training configuration, read from YAML or TOML and validated."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from model.config import FrozenConfig, ModelConfig


class StageConfig(FrozenConfig):
    steps: int = Field(1000, ge=1, description="optimizer steps (upper bound)")
    max_minutes: float | None = Field(None, gt=0, description="stop earlier after this wall time")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(200, ge=1)


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


class TrainConfig(FrozenConfig):
    data: tuple[Path, ...] = Field(..., min_length=1, description="dataset folders (MSD, nnU-Net v2 or plain)")
    cache_dir: Path | None = None
    out: Path = Path("runs/latest")
    bundle_name: str = "latentseg"
    bundle_version: str = "0.1.0"
    seed: int = 0
    device: str | None = None
    foreground_prob: float = Field(0.7, ge=0, le=1)
    dataset_weights: dict[str, float] | None = Field(None, description="dataset name -> sampling weight (default uniform)")
    text_embeddings: Path | None = Field(None, description=".npy table (max_id+1, dim) for conditioning='text'")
    model: ModelConfig = ModelConfig()
    mask_ae: MaskAEStage = MaskAEStage()
    image_vae: ImageVAEStage = ImageVAEStage()
    diffusion: DiffusionStage = DiffusionStage()


class ConfigError(ValueError):
    pass


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file; relative data paths are
    resolved against the config file's folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from exc
    raw = dict(raw or {})
    raw.update(overrides or {})
    for key in ("cache_dir", "out", "text_embeddings"):
        if raw.get(key) and not Path(raw[key]).is_absolute():
            raw[key] = str((path.parent / raw[key]).resolve())
    raw["data"] = [str(d if Path(d).is_absolute() else (path.parent / d).resolve()) for d in raw.get("data", [])]
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
