from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from model.bundle.loaded import build_networks, randomise_zero_parameters
from model.bundle.config import (
    DenoiserConfig,
    ImageVAEConfig,
    MaskAEConfig,
    ModelConfig,
    PreprocessConfig,
    tiny_config,
)
from model.nets.autoencoder import MaskAutoencoder, build_image_vae, encode_image_mean
from model.nets.unet import LatentDenoiser
from model.targets.vocabulary import default_vocabulary

NUM_IDS = default_vocabulary().max_id + 1


@pytest.mark.parametrize("config", [tiny_config(), ModelConfig()], ids=["tiny", "default"])
def test_shapes(config: ModelConfig) -> None:
    torch.manual_seed(0)
    nets = build_networks(config, default_vocabulary())
    h, w = config.preprocess.patch_size
    c, hz, wz = config.latent_shape
    image = torch.rand(2, 1, h, w)
    mask = (torch.rand(2, 1, h, w) > 0.5).float()
    with torch.no_grad():
        z_mask = nets.mask_ae.encode(mask)
        z_image = encode_image_mean(nets.image_vae, image)
        assert z_mask.shape == (2, c, hz, wz)
        assert z_image.shape == (2, config.image_vae.latent_channels, hz, wz)
        assert nets.mask_ae.decode(z_mask).shape == (2, 1, h, w)
        out = nets.denoiser(z_mask, torch.tensor([0, 999]), z_image, torch.tensor([1, 6]))
    assert out.shape == (2, 2 * c, hz, wz)  # z0 prediction + variance values (learned range)


def test_mask_decoder_gives_unbounded_logits_of_input_size() -> None:
    torch.manual_seed(0)
    ae = MaskAutoencoder(MaskAEConfig(base_channels=4))
    randomise_zero_parameters(ae, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = ae.decode(torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 20)
    assert logits.shape == (3, 1, 64, 64)
    assert logits.min() < 0 < logits.max()  # logits, not probabilities


def _denoiser(conditioning: str, table: torch.Tensor | None = None) -> LatentDenoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(channels=(16, 32, 32), num_head_channels=16, norm_num_groups=8, conditioning=conditioning)
    net = LatentDenoiser(cfg, latent_channels=4, num_target_ids=NUM_IDS, out_multiplier=2, text_embeddings=table)
    randomise_zero_parameters(net, torch.Generator().manual_seed(0))
    return net.eval()


@pytest.mark.parametrize("conditioning", ["learnt", "text"])
def test_different_targets_give_different_outputs(conditioning: str) -> None:
    table = torch.randn(NUM_IDS, 384, generator=torch.Generator().manual_seed(2)) if conditioning == "text" else None
    net = _denoiser(conditioning, table)
    if conditioning == "text":
        assert net.unet.class_embedding.table.shape == (NUM_IDS, 384)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)).expand(2, -1, -1, -1)
    zi = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = net(z, torch.tensor([500, 500]), zi, torch.tensor([1, 6]))
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_text_conditioning_needs_a_table_of_the_right_shape() -> None:
    with pytest.raises(ValueError, match="text-embedding table"):
        _denoiser("text", None)
    with pytest.raises(ValueError, match="384"):
        _denoiser("text", torch.zeros(NUM_IDS, 100))
    with pytest.raises(ValueError):
        _denoiser("text", torch.zeros(NUM_IDS - 1, 384))


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="same size"):
        ModelConfig(mask_ae=MaskAEConfig(downsample_levels=2))  # f=4 vs the VAE's f=8
    with pytest.raises(ValidationError, match="divisible by the latent factor"):
        ModelConfig(preprocess=PreprocessConfig(patch_size=(100, 100)))
    with pytest.raises(ValidationError, match="U-Net's downsampling"):
        ModelConfig(preprocess=PreprocessConfig(patch_size=(72, 72)))  # latent 9x9
    with pytest.raises(ValidationError, match="norm_num_groups"):
        DenoiserConfig(channels=(16, 24, 32), norm_num_groups=16)
    with pytest.raises(ValidationError, match="attention_levels"):
        DenoiserConfig(channels=(16, 32), attention_levels=(False, False, True))
    with pytest.raises(ValidationError):
        PreprocessConfig(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValidationError):
        PreprocessConfig(intensity_min=100, intensity_max=0)
    with pytest.raises(ValidationError):
        ModelConfig.from_dict({**tiny_config().to_dict(), "surprise": 1})


def test_configs_are_frozen_and_round_trip() -> None:
    cfg = tiny_config()
    with pytest.raises(ValidationError):
        cfg.sampling.steps = 3  # type: ignore[misc]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_image_vae_builds_from_its_config() -> None:
    vae = build_image_vae(ImageVAEConfig(channels=(8, 16, 16, 16), norm_num_groups=4))
    with torch.no_grad():
        assert encode_image_mean(vae, torch.rand(1, 1, 32, 32)).shape == (1, 4, 4, 4)


def _stem_config(stem: tuple[int, ...] = (4, 8, 8, 16), **denoiser: object) -> ModelConfig:
    base = tiny_config()
    update = {"image_pixels": True, "pixel_stem": stem, **denoiser}
    return ModelConfig.model_validate({**base.to_dict(), "denoiser": {**base.denoiser.model_dump(), **update}})


def test_a_pixel_stem_reads_the_full_resolution_window_from_z_image() -> None:
    config = _stem_config(context_slices=1)
    assert config.denoiser_input_channels == 4 + config.image_condition_channels + 16
    torch.manual_seed(0)
    nets = build_networks(config, default_vocabulary())
    randomise_zero_parameters(nets.denoiser, torch.Generator().manual_seed(0))
    net = nets.denoiser.eval()
    assert net.unet.conv_in.conv.weight.shape[1] == config.denoiser_input_channels
    f, (h, w) = config.image_pixel_factor, config.preprocess.patch_size
    g = torch.Generator().manual_seed(1)
    window = torch.rand(1, config.image_window_channels, h, w, generator=g) * 2 - 1
    z_latent = torch.randn(1, config.image_vae.latent_channels, h // f, w // f, generator=g)
    z, t, ids = torch.randn(1, *config.latent_shape, generator=g), torch.tensor([300]), torch.tensor([1])
    with torch.no_grad():
        features = net.pixel_stem(window)
        assert features.shape == (1, 16, h // f, w // f)
        out = net(z, t, torch.cat([z_latent, F.pixel_unshuffle(window, f)], dim=1), ids)
        # The same prediction by hand: the stem's features of exactly this window, after z_image.
        by_hand = net.unet(
            torch.cat([z, z_latent, F.pixel_unshuffle(window, f), features], dim=1), timesteps=t, class_labels=ids
        )
    torch.testing.assert_close(out, by_hand)


@pytest.mark.parametrize(
    ("denoiser", "message"),
    [
        ({"pixel_stem": (4, 8, 16)}, "needs 4 channel counts"),
        ({"pixel_stem": (4, 8, 8, 16), "image_pixels": False}, "pixel_stem needs image_pixels"),
        ({"pixel_stem": (4, 0, 8, 16)}, "positive"),
    ],
)
def test_a_pixel_stem_that_cannot_reach_the_latent_grid_is_a_config_error(denoiser: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _stem_config(**denoiser)
