"""Sampling with the per-window conditioning features (the torch backend's fast path) gives the same member
probabilities and mean masks as the straightforward path that runs the whole denoiser at every step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from model.bundle.config import ModelConfig, tiny_config
from model.bundle.loaded import LoadedBundle, load_bundle, write_random_bundle
from model.inference.ensemble import WindowKey, ensemble_statistics, sample_window_probabilities, step_denoiser


class Straightforward:
    """A bundle without ``condition_features``: every step runs ``bundle.denoiser`` on the full z_image."""

    def __init__(self, bundle: LoadedBundle) -> None:
        self._bundle = bundle
        self.denoiser_calls = 0

    def denoiser(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.denoiser_calls += 1
        return self._bundle.denoiser(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("condition_features", "denoiser_features"):
            raise AttributeError(name)
        return getattr(self._bundle, name)


@pytest.fixture(scope="module")
def stem_bundle(tmp_path_factory: pytest.TempPathFactory) -> LoadedBundle:
    data = tiny_config().to_dict()
    data["denoiser"].update(image_pixels=True, context_slices=2, pixel_stem=[4, 8, 8, 16])
    path: Path = write_random_bundle(tmp_path_factory.mktemp("bundles") / "stem", seed=1, config=ModelConfig.from_dict(data))
    return load_bundle(path, device="cpu")


def windows(bundle: LoadedBundle, n: int) -> torch.Tensor:
    h, w = bundle.config.preprocess.patch_size
    return torch.rand(n, bundle.config.image_window_channels, h, w, generator=torch.Generator().manual_seed(11))


KEYS = [WindowKey(0, 0, 0), WindowKey(1, 0, 0), WindowKey(4, 8, 16)]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_fast_path_equals_straightforward_path(stem_bundle: LoadedBundle, sampler: str) -> None:
    plain = Straightforward(stem_bundle)
    assert step_denoiser(plain, torch.zeros(1))[0] == plain.denoiser
    kwargs = dict(ensemble=3, seed=7, sampler=sampler, max_batch=7)
    process = stem_bundle.process(4)
    images = windows(stem_bundle, 3)
    fast = sample_window_probabilities(stem_bundle, process, images, KEYS, [6, 1], **kwargs)
    slow = sample_window_probabilities(plain, process, images, KEYS, [6, 1], **kwargs)
    assert plain.denoiser_calls > 0
    assert (fast - slow).abs().max() <= 1e-5
    fast_mean, fast_var = ensemble_statistics(fast, dim=2)
    slow_mean, slow_var = ensemble_statistics(slow, dim=2)
    assert (fast_mean - slow_mean).abs().max() <= 1e-5
    assert (fast_var - slow_var).abs().max() <= 1e-5
    assert (fast[:, :, 0] - fast[:, :, 1]).abs().max() > 1e-3  # members differ: the comparison is not trivial


def test_torch_bundle_takes_the_fast_path(stem_bundle: LoadedBundle) -> None:
    z_image = stem_bundle.encode_image(windows(stem_bundle, 2))
    _, condition = step_denoiser(stem_bundle, z_image)
    assert condition.shape[1] == stem_bundle.config.denoiser.channels[0] < z_image.shape[1]
