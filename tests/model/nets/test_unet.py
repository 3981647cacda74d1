"""The denoiser's sampling split (``condition_features`` once per window, ``forward_features`` per step)
gives :meth:`LatentDenoiser.forward`'s output."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from model.bundle.config import ModelConfig, tiny_config
from model.bundle.loaded import build_networks, randomise_zero_parameters
from model.nets.unet import LatentDenoiser
from model.targets.vocabulary import default_vocabulary


def with_denoiser(config: ModelConfig, **changes: Any) -> ModelConfig:
    data = config.to_dict()
    data["denoiser"].update(changes)
    return ModelConfig.from_dict(data)


def stem_config() -> ModelConfig:
    """tiny_config with the demo bundle's conditioning: window pixels, two context slices each side, a pixel stem."""
    return with_denoiser(tiny_config(), image_pixels=True, context_slices=2, pixel_stem=[4, 8, 8, 16])


def denoiser_for(config: ModelConfig, seed: int) -> LatentDenoiser:
    torch.manual_seed(seed)
    vocabulary = default_vocabulary()
    text = None
    if config.denoiser.conditioning == "text":
        text = torch.randn(vocabulary.max_id + 1, config.denoiser.text_embedding_dim, generator=torch.Generator().manual_seed(seed))
    net = build_networks(config, vocabulary, text).denoiser
    randomise_zero_parameters(net, torch.Generator().manual_seed(seed), std=0.2)
    return net.eval()


def inputs(config: ModelConfig, batch: int, seed: int, *, encoded: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    c, h, w = config.latent_shape
    channels = config.encoded_image_channels if encoded else config.image_condition_channels
    return (
        torch.randn(batch, c, h, w, generator=g),
        torch.randint(0, config.diffusion.num_timesteps, (batch,), generator=g),
        torch.randn(batch, channels, h, w, generator=g),
        torch.randint(1, 10, (batch,), generator=g),
    )


CONFIGS = {
    "latent only": tiny_config,
    "stem + context": stem_config,
    "text conditioning": lambda: with_denoiser(stem_config(), conditioning="text", text_embedding_dim=12),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("encoded", [False, True], ids=["z_image raw", "stem features appended"])
def test_forward_features_equals_forward(name: str, encoded: bool) -> None:
    config = CONFIGS[name]()
    if encoded and not config.denoiser.pixel_stem:
        pytest.skip("no stem: raw and encoded z_image are the same")
    net = denoiser_for(config, seed=3)
    z_t, t, z_image, ids = inputs(config, 5, seed=4, encoded=encoded)
    with torch.no_grad():
        expected = net(z_t, t, z_image, ids)
        features = net.condition_features(z_image)
        got = net.forward_features(z_t, t, features, ids)
    assert features.shape == (5, config.denoiser.channels[0], *config.latent_shape[1:])
    assert expected.abs().max() > 0.1  # the check is not on a vanishing output
    # Two float32 paths of the same arithmetic: summation order differs by CPU kernel (an AMD EPYC with AVX2
    # rounds to 1.9e-5 here, an Intel Xeon under 1e-5); a wrong path differs by the output's own scale (> 0.1).
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_features_are_per_window_and_indexable() -> None:
    """Features of a batch of windows, indexed per pair, equal features computed per pair (what sampling relies on)."""
    config = stem_config()
    net = denoiser_for(config, seed=5)
    z_t, t, z_image, ids = inputs(config, 6, seed=6, encoded=True)
    pick = torch.tensor([0, 0, 2, 5, 5, 1])
    with torch.no_grad():
        once = net.condition_features(z_image[:6])[pick]
        expected = net(z_t, t, z_image[pick], ids)
        got = net.forward_features(z_t, t, once, ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)  # float32 rounding, as above


def test_features_exclude_the_noisy_latent() -> None:
    """The features depend on the conditioning only: z_t's weights act in forward_features."""
    config = stem_config()
    net = denoiser_for(config, seed=7)
    z_t, t, z_image, ids = inputs(config, 2, seed=8, encoded=True)
    with torch.no_grad():
        features = net.condition_features(z_image)
        a = net.forward_features(z_t, t, features, ids)
        b = net.forward_features(z_t + 1.0, t, features, ids)
    assert (a - b).abs().max() > 1e-3
