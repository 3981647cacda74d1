"""`init_from`: stages start from a bundle's weights (fine-tuning), checked against the bundle's
architecture; a checkpoint of the run itself still wins over the bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from model.bundle.loaded import load_bundle, write_random_bundle
from training.finetune import FinetuneError
from training.loops import STAGES, train

# A learning rate this small leaves the weights where they started, to float precision.
FROZEN = {"steps": 1, "batch_size": 2, "lr": 1e-12, "checkpoint_every": 1000}


@pytest.fixture
def parent(tmp_path: Path, train_config: Any) -> Path:
    """A random bundle with the tiny config's architecture (not the seed the run would use)."""
    return write_random_bundle(tmp_path / "parent", seed=11, config=train_config().model)


def _checkpoint(config: Any, stage: str) -> dict[str, torch.Tensor]:
    return torch.load(config.out / "checkpoints" / f"{stage}.pt", map_location="cpu", weights_only=False)["model"]


def test_every_stage_starts_from_the_bundle_weights(train_config: Any, parent: Path) -> None:
    config = train_config(init_from=str(parent), mask_ae=FROZEN, image_vae=FROZEN, diffusion={**FROZEN, "scale_batches": 1})
    train(config, STAGES)
    source = load_bundle(parent, device="cpu").networks
    for stage, network in (("mask-ae", source.mask_ae), ("image-vae", source.image_vae), ("diffusion", source.denoiser)):
        trained = _checkpoint(config, stage)
        for key, value in network.state_dict().items():
            torch.testing.assert_close(trained[key], value, rtol=0, atol=1e-6, msg=f"{stage}: {key}")
    result = load_bundle(config.out / "bundle", device="cpu")
    portable = "/".join(parent.resolve().parts[-2:])  # outside the repository: its last two path components
    assert result.manifest.provenance["init_from"] == {"path": portable, "name": "random-tiny", "version": "0.0.0"}

    # Without init_from the same run starts from its own seeded initialisation instead.
    fresh = train_config("fresh.yaml", out="fresh", mask_ae=FROZEN)
    train(fresh, ("mask-ae",))
    differs = [
        not torch.allclose(_checkpoint(fresh, "mask-ae")[k], v) for k, v in source.mask_ae.state_dict().items() if v.ndim > 1
    ]
    assert all(differs)


def test_a_checkpoint_of_the_run_wins_over_the_bundle(train_config: Any, parent: Path) -> None:
    config = train_config(mask_ae={**FROZEN, "lr": 1e-3})
    train(config, ("mask-ae",))
    own = _checkpoint(config, "mask-ae")
    longer = train_config(init_from=str(parent), mask_ae={**FROZEN, "steps": 2, "lr": 1e-12})
    assert longer.out == config.out
    train(longer, ("mask-ae",))
    for key, value in own.items():
        torch.testing.assert_close(_checkpoint(longer, "mask-ae")[key], value, rtol=0, atol=1e-6)


def test_a_different_architecture_is_named(tmp_path: Path, train_config: Any) -> None:
    base = train_config()
    wider = base.model.model_copy(update={"mask_ae": base.model.mask_ae.model_copy(update={"base_channels": 8})})
    parent = write_random_bundle(tmp_path / "wider", seed=1, config=wider)
    config = train_config(init_from=str(parent), mask_ae=FROZEN)
    with pytest.raises(FinetuneError, match=r"model\.mask_ae settings \(base_channels\)"):
        train(config, ("mask-ae",))
    # The image VAE has the same architecture in both, so that stage may start from this bundle.
    train(train_config(init_from=str(parent), image_vae=FROZEN), ("image-vae",))


def test_a_missing_bundle_is_a_clear_error(tmp_path: Path, train_config: Any) -> None:
    config = train_config(init_from=str(tmp_path / "nowhere"), mask_ae=FROZEN)
    with pytest.raises(FinetuneError, match="init_from: .*nowhere"):
        train(config, ("mask-ae",))


def test_zero_steps_keep_the_bundle_network_for_the_next_stage(train_config: Any, parent: Path) -> None:
    zero = {"steps": 0}
    config = train_config(init_from=str(parent), mask_ae=zero, image_vae=zero, diffusion={**FROZEN, "scale_batches": 1})
    results = train(config, STAGES)
    assert results["mask-ae"].steps == 0 and results["image-vae"].steps == 0
    source = load_bundle(parent, device="cpu").networks
    bundle = load_bundle(config.out / "bundle", device="cpu").networks
    for mine, theirs in ((bundle.mask_ae, source.mask_ae), (bundle.image_vae, source.image_vae)):
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[key], value, rtol=0, atol=0)


def test_zero_steps_without_a_bundle_is_a_config_error(train_config: Any) -> None:
    from training.config import ConfigError

    with pytest.raises(ConfigError, match=r"image_vae\.steps = 0 needs init_from"):
        train_config(image_vae={"steps": 0})


def _with_pixels(model: Any, on: bool) -> Any:
    return model.model_copy(update={"denoiser": model.denoiser.model_copy(update={"image_pixels": on})})


def test_switching_pixel_conditioning_on_starts_from_the_bundle_predictions(train_config: Any, parent: Path) -> None:
    base = train_config()
    config = train_config(
        init_from=str(parent), model=_with_pixels(base.model, True).to_dict(),
        mask_ae={"steps": 0}, image_vae={"steps": 0}, diffusion={**FROZEN, "scale_batches": 1},
    )
    train(config, STAGES)
    before = load_bundle(parent, device="cpu")
    after = load_bundle(config.out / "bundle", device="cpu")
    assert after.config.denoiser.image_pixels and not before.config.denoiser.image_pixels
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, *base.model.preprocess.patch_size, generator=g)
    z = torch.randn(2, *base.model.latent_shape, generator=g)
    t, ids = torch.tensor([900, 100]), torch.tensor([1, 6])
    z_latent = before.encode_image(image)
    pixels = torch.nn.functional.pixel_unshuffle(image * 2 - 1, base.model.image_vae.factor)
    with torch.no_grad():
        old = before.denoiser(z, t, z_latent, ids)
        new = after.denoiser(z, t, torch.cat([z_latent, pixels], dim=1), ids)
    assert after.encode_image(image).shape[1] == z_latent.shape[1] + pixels.shape[1]
    # Zero weights on the new pixel channels: exactly the parent's predictions to start with.
    torch.testing.assert_close(new, old, rtol=0, atol=1e-5)
    conv = after.networks.denoiser.unet.conv_in.conv.weight
    first = before.networks.denoiser.unet.conv_in.conv.weight
    torch.testing.assert_close(conv[:, : first.shape[1]], first, rtol=0, atol=1e-6)
    assert conv[:, first.shape[1] :].abs().max() < 1e-6


def test_pixel_conditioning_cannot_be_dropped(tmp_path: Path, train_config: Any) -> None:
    base = train_config()
    parent = write_random_bundle(tmp_path / "pixels", seed=2, config=_with_pixels(base.model, True))
    config = train_config(
        init_from=str(parent), mask_ae={"steps": 0}, image_vae={"steps": 0}, diffusion={**FROZEN, "scale_batches": 1}
    )
    with pytest.raises(FinetuneError, match=r"model\.denoiser settings \(image_pixels\)"):
        train(config, STAGES)


def _with_context(model: Any, slices: int) -> Any:
    denoiser = model.denoiser.model_copy(update={"image_pixels": True, "context_slices": slices})
    return model.model_copy(update={"denoiser": denoiser})


def test_adding_context_slices_to_a_pixel_bundle_starts_from_its_predictions(tmp_path: Path, train_config: Any) -> None:
    base = train_config()
    parent = write_random_bundle(tmp_path / "pixels", seed=3, config=_with_pixels(base.model, True))
    config = train_config(
        init_from=str(parent), model=_with_context(base.model, 1).to_dict(),
        mask_ae={"steps": 0}, image_vae={"steps": 0}, diffusion={**FROZEN, "scale_batches": 1},
    )
    train(config, STAGES)
    before = load_bundle(parent, device="cpu")
    after = load_bundle(config.out / "bundle", device="cpu")
    assert after.config.image_window_channels == 3
    assert after.latent_scale == before.latent_scale  # both auto-encoders kept: so are their scale factors
    g = torch.Generator().manual_seed(0)
    windows = torch.rand(2, 3, *base.model.preprocess.patch_size, generator=g)
    z = torch.randn(2, *base.model.latent_shape, generator=g)
    t, ids = torch.tensor([900, 100]), torch.tensor([1, 6])
    with torch.no_grad():
        old = before.denoiser(z, t, before.encode_image(windows[:, :1]), ids)
        # The parent's conditioning is a prefix of the new one: the slice's latent and pixels come first.
        new = after.denoiser(z, t, after.encode_image(windows), ids)
    torch.testing.assert_close(new, old, rtol=0, atol=1e-5)

    narrower = train_config(
        name="narrow.yaml", init_from=str(config.out / "bundle"), model=_with_pixels(base.model, True).to_dict(),
        mask_ae={"steps": 0}, image_vae={"steps": 0}, diffusion={**FROZEN, "scale_batches": 1}, out=str(tmp_path / "narrow"),
    )
    with pytest.raises(FinetuneError, match=r"model\.denoiser settings \(context_slices\)"):
        train(narrower, STAGES)


def _with_stem(model: Any, stem: tuple[int, ...]) -> Any:
    denoiser = model.denoiser.model_copy(update={"image_pixels": True, "context_slices": 1, "pixel_stem": stem})
    return model.model_copy(update={"denoiser": denoiser})


def test_adding_a_pixel_stem_starts_from_the_bundle_predictions_and_then_learns_to_use_it(
    tmp_path: Path, train_config: Any
) -> None:
    base = train_config()
    parent = write_random_bundle(tmp_path / "context", seed=4, config=_with_context(base.model, 1))
    stem_model = _with_stem(base.model, (4, 8, 8, 16)).to_dict()
    frozen = train_config(
        init_from=str(parent), model=stem_model,
        mask_ae={"steps": 0}, image_vae={"steps": 0}, diffusion={**FROZEN, "scale_batches": 1},
    )
    train(frozen, STAGES)
    before = load_bundle(parent, device="cpu")
    after = load_bundle(frozen.out / "bundle", device="cpu")
    g = torch.Generator().manual_seed(0)
    windows = torch.rand(2, 3, *base.model.preprocess.patch_size, generator=g)
    z = torch.randn(2, *base.model.latent_shape, generator=g)
    t, ids = torch.tensor([900, 100]), torch.tensor([1, 6])
    with torch.no_grad():
        z_image = before.encode_image(windows)
        encoded = after.encode_image(windows)  # the stem's features computed once, after the same z_image
        old = before.denoiser(z, t, z_image, ids)
        new = after.denoiser(z, t, encoded, ids)
        stepwise = after.denoiser(z, t, z_image, ids)  # as in training: the stem runs inside the call
        stem = after.networks.denoiser.pixel_stem(windows * 2 - 1)
    assert encoded.shape[1] == z_image.shape[1] + 16 and torch.equal(encoded[:, : z_image.shape[1]], z_image)
    torch.testing.assert_close(encoded[:, z_image.shape[1] :], stem)
    assert stem.abs().max() > 1e-3  # a live stem, started from the run's own initial weights...
    torch.testing.assert_close(new, old, rtol=0, atol=1e-5)  # ...behind zero input weights
    torch.testing.assert_close(stepwise, new)
    first = before.networks.denoiser.unet.conv_in.conv.weight
    conv = after.networks.denoiser.unet.conv_in.conv.weight
    assert conv.shape[1] == first.shape[1] + 16 and conv[:, first.shape[1] :].abs().max() < 1e-6

    learning = train_config(
        name="learning.yaml", init_from=str(parent), model=stem_model, out=str(tmp_path / "learning"),
        mask_ae={"steps": 0}, image_vae={"steps": 0},
        diffusion={"steps": 3, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 1000, "scale_batches": 1},
    )
    train(learning, STAGES)
    learnt = load_bundle(learning.out / "bundle", device="cpu").networks.denoiser
    assert learnt.unet.conv_in.conv.weight[:, first.shape[1] :].abs().max() > 1e-5

    other = train_config(
        name="other.yaml", init_from=str(frozen.out / "bundle"), model=_with_stem(base.model, (4, 8, 8, 32)).to_dict(),
        mask_ae={"steps": 0}, image_vae={"steps": 0}, diffusion={**FROZEN, "scale_batches": 1}, out=str(tmp_path / "other"),
    )
    with pytest.raises(FinetuneError, match=r"model\.denoiser settings \(pixel_stem\)"):
        train(other, STAGES)
