"""The three trainers on the tiny config: losses go down, resume is exact, the bundle is complete."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.bundle.loaded import load_bundle
from model.targets.vocabulary import default_vocabulary
from tests.training.conftest import read_log, write_train_config
from training.config import TrainConfig, load_train_config
from training.data import PatchSampler, prepare_sources, read_dataset
from training.loops import STAGES, train

STEPS = 40
VAE_STEPS = 25  # the VAE is the slowest stage and its loss drops fastest


def _with_steps(config: TrainConfig, **steps: int) -> TrainConfig:
    update = {stage: getattr(config, stage).model_copy(update={"steps": n}) for stage, n in steps.items()}
    return config.model_copy(update=update)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, msd_phantoms: Path) -> dict[str, Any]:
    """All three stages, 40 steps of batch 8 each, every step logged. The diffusion stage is run
    to step 1 first (its checkpoint kept as the 'before' weights), then resumed to step 40."""
    root = tmp_path_factory.mktemp("trained")
    stage = {"steps": STEPS, "batch_size": 8, "log_every": 1, "checkpoint_every": 1000}
    path = write_train_config(
        root / "config.yaml", [msd_phantoms], seed=3,
        mask_ae=stage, image_vae={**stage, "steps": VAE_STEPS},
        # The demo's settings: bf16 frozen encoders on CPU, warm-up then cosine decay.
        diffusion={**stage, "ema_decay": 0.9, "encoder_dtype": "bfloat16", "lr_schedule": "cosine", "warmup_steps": 4},
    )
    config = load_train_config(path)
    train(_with_steps(config, diffusion=1), STAGES)
    before = torch.load(config.out / "checkpoints" / "diffusion.pt", map_location="cpu", weights_only=False)
    results = train(config, ("diffusion",))
    return {"config": config, "results": results, "diffusion_before": before["model"]}


def _first_and_last(log: list[dict[str, float]], key: str, n: int = 8) -> tuple[float, float]:
    values = [row[key] for row in log]
    return float(np.mean(values[:n])), float(np.mean(values[-n:]))


@pytest.mark.parametrize("stage, steps, ratio", [("mask-ae", STEPS, 0.85), ("image-vae", VAE_STEPS, 0.6)])
def test_autoencoder_trainer_lowers_its_loss(trained: dict[str, Any], stage: str, steps: int, ratio: float) -> None:
    log = read_log(trained["config"].out / "logs" / f"{stage}.csv")
    assert [row["step"] for row in log] == list(range(1, steps + 1))
    first, last = _first_and_last(log, "loss")
    assert last < ratio * first, (first, last)


def _diffusion_eval(config: TrainConfig, denoiser_state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Hybrid loss of the given denoiser weights on a fixed batch, fixed timesteps and fixed noise."""
    bundle = load_bundle(config.out / "bundle", device="cpu")
    bundle.networks.denoiser.load_state_dict(denoiser_state)
    vocabulary = default_vocabulary()
    cases = prepare_sources([read_dataset(d, vocabulary) for d in config.data], vocabulary,
                            config.model.preprocess, config.cache_dir)
    batch = PatchSampler(cases, config.model.preprocess.patch_size, seed=1234).batch(48)
    process = bundle.process(1000)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z0 = bundle.networks.mask_ae.encode(batch.masks) * bundle.latent_scale.mask
        z_image = bundle.encode_image(batch.images)
        t = torch.linspace(0, process.num_timesteps - 1, z0.shape[0]).long()
        noise = torch.randn(z0.shape, generator=generator)
        terms = process.training_losses(
            bundle.networks.denoiser, z0, t, noise, {"z_image": z_image, "target_ids": batch.target_ids}
        )
    return {k: float(v.mean()) for k, v in terms.items()}


def test_diffusion_trainer_lowers_its_loss(trained: dict[str, Any]) -> None:
    config = trained["config"]
    after = torch.load(config.out / "checkpoints" / "diffusion.pt", map_location="cpu", weights_only=False)
    assert after["step"] == STEPS
    before = _diffusion_eval(config, trained["diffusion_before"])
    final = _diffusion_eval(config, after["model"])
    assert final["mse"] < 0.8 * before["mse"], (before, final)  # scored with float32 encoders, as at inference
    assert final["loss"] < before["loss"], (before, final)
    rates = {int(row["step"]): row["lr"] for row in read_log(config.out / "logs" / "diffusion.csv")}
    lr = config.diffusion.lr
    assert rates[STEPS] == pytest.approx(lr * config.diffusion.lr_min_fraction, rel=0.05)  # decayed to the floor
    assert max(rates.values()) == pytest.approx(lr, rel=0.01)


def test_bundle_from_training_is_complete(trained: dict[str, Any]) -> None:
    config = trained["config"]
    bundle = load_bundle(config.out / "bundle", device="cpu")
    vocabulary = default_vocabulary()
    assert bundle.trained_targets == tuple(
        sorted(vocabulary.dataset("latentseg_phantoms").annotated, key=lambda n: vocabulary.get(n).id)
    )
    assert bundle.config == config.model
    assert bundle.name == config.bundle_name
    # Measured, not defaulted: the mask AE's latents are far from unit scale after 40 steps.
    assert bundle.latent_scale.mask != 1.0 and bundle.latent_scale.image != 1.0
    assert bundle.manifest.provenance["trained"] is True
    assert bundle.manifest.provenance["stages"]["diffusion"]["steps"] == STEPS
    # The denoiser shipped is the EMA of the trained weights; the autoencoders are the trained ones.
    ckpt = {s: torch.load(config.out / "checkpoints" / f"{s}.pt", map_location="cpu", weights_only=False) for s in STAGES}
    for key, value in bundle.networks.denoiser.state_dict().items():
        torch.testing.assert_close(value, ckpt["diffusion"]["ema"][key])
    for key, value in bundle.networks.mask_ae.state_dict().items():
        torch.testing.assert_close(value, ckpt["mask-ae"]["model"][key])
    for key, value in bundle.networks.image_vae.state_dict().items():
        torch.testing.assert_close(value, ckpt["image-vae"]["model"][key])


# ---------------------------------------------------------------- resume


def test_resume_continues_and_matches_an_uninterrupted_run(train_config: Any) -> None:
    stage = {"batch_size": 4, "log_every": 5, "checkpoint_every": 1000}
    config = train_config("resumed.yaml", out="resumed", mask_ae={**stage, "steps": 10})
    checkpoint = config.out / "checkpoints" / "mask-ae.pt"
    log_path = config.out / "logs" / "mask-ae.csv"

    first = train(config, ("mask-ae",))["mask-ae"]
    assert first.steps == 10
    assert torch.load(checkpoint, weights_only=False)["step"] == 10
    assert [row["step"] for row in read_log(log_path)] == [5, 10]

    longer = _with_steps(config, mask_ae=20)
    second = train(longer, ("mask-ae",))["mask-ae"]
    assert second.steps == 20
    state = torch.load(checkpoint, weights_only=False)
    assert state["step"] == 20
    assert [row["step"] for row in read_log(log_path)] == [5, 10, 15, 20]

    # Same weights as 20 steps in one go: model, optimiser and sampler state all resumed.
    straight = train_config("straight.yaml", out="straight", mask_ae={**stage, "steps": 20})
    train(straight, ("mask-ae",))
    reference = torch.load(straight.out / "checkpoints" / "mask-ae.pt", weights_only=False)
    for key, value in reference["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=1e-5, atol=1e-6)
    def losses(path: Path) -> list[dict[str, float]]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in read_log(path)]

    assert losses(log_path) == losses(straight.out / "logs" / "mask-ae.csv")

    # A finished stage is not retrained.
    before = checkpoint.read_bytes()
    rows = read_log(log_path)
    again = train(longer, ("mask-ae",))["mask-ae"]
    assert again.steps == 20 and again.seconds == 0.0
    assert checkpoint.read_bytes() == before
    assert read_log(log_path) == rows


def test_perceptual_term_without_weights_is_logged_and_skipped(
    train_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = train_config(image_vae={"steps": 2, "batch_size": 2, "perceptual_weight": 0.5})
    with caplog.at_level("WARNING", logger="training.loops"):
        result = train(config, ("image-vae",))["image-vae"]
    assert result.steps == 2
    assert any("perceptual" in r.getMessage() and "without it" in r.getMessage() for r in caplog.records)
    assert "perceptual" not in read_log(config.out / "logs" / "image-vae.csv")[0]


def test_diffusion_without_autoencoders_is_a_clear_error(train_config: Any) -> None:
    config = train_config(diffusion={"steps": 1})
    with pytest.raises(FileNotFoundError, match="mask-ae"):
        train(config, ("diffusion",))


def test_resume_after_a_crash_does_not_log_steps_twice(train_config: Any) -> None:
    config = train_config("crash.yaml", out="crash", mask_ae={"steps": 4, "batch_size": 2, "log_every": 1})
    checkpoint = config.out / "checkpoints" / "mask-ae.pt"
    log_path = config.out / "logs" / "mask-ae.csv"
    train(config, ("mask-ae",))
    at_step_4 = checkpoint.read_bytes()
    longer = _with_steps(config, mask_ae=7)
    train(longer, ("mask-ae",))
    # As if the process died after logging step 7 but before writing its checkpoint.
    checkpoint.write_bytes(at_step_4)
    train(longer, ("mask-ae",))
    assert [row["step"] for row in read_log(log_path)] == [1, 2, 3, 4, 5, 6, 7]


def test_bfloat16_encoding_only_where_the_cpu_has_it(caplog: pytest.LogCaptureFixture) -> None:
    from model.hardware import cpu_has_fast_bfloat16
    from training.loops import encoder_in_bfloat16

    assert not encoder_in_bfloat16("float32", torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="training.loops"):
        used = encoder_in_bfloat16("bfloat16", torch.device("cpu"))
    assert used == cpu_has_fast_bfloat16()
    assert ("no native bf16" in caplog.text) == (not used)
