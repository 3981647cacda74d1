"""training.weight_average: the averaged bundle loads, its denoiser is the weighted mean of the sources', its
auto-encoders are theirs, and bundles that cannot be averaged are refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.bundle.loaded import load_bundle, save_bundle, write_random_bundle
from model.bundle.manifest import WEIGHTS_NAME
from model.errors import BundleError
from training.weight_average import average_bundles, averaged_state


def fine_tune_of(parent: Path, out: Path, seed: int) -> Path:
    """A stand-in for a fine-tune of ``parent``: the same auto-encoders, a perturbed denoiser."""
    bundle = load_bundle(parent, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bundle.networks.denoiser.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    m = bundle.manifest
    return save_bundle(out, config=bundle.config, vocabulary=m.vocabulary, networks=bundle.networks,
                       latent_scale=m.latent_scale, trained_targets=m.trained_targets, name=m.name,
                       version=m.version, provenance={"seed": seed, "init_from": {"path": "parent"}})


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("soup")
    parent = write_random_bundle(root / "parent", seed=3)
    return parent, fine_tune_of(parent, root / "a", 1), fine_tune_of(parent, root / "b", 2)


def test_the_average_is_the_weighted_mean_of_the_denoisers(family: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, a, b = family
    out = average_bundles([a, b], tmp_path / "ab", weights=[3, 1])
    ta, tb, tout = (load_file(str(p / WEIGHTS_NAME)) for p in (a, b, out))
    denoiser = [k for k in tout if k.startswith("denoiser.")]
    assert denoiser and any(not torch.equal(ta[k], tb[k]) for k in denoiser)
    for key in denoiser:
        torch.testing.assert_close(tout[key], 0.75 * ta[key] + 0.25 * tb[key])
    for key in (k for k in tout if not k.startswith("denoiser.")):
        assert torch.equal(tout[key], ta[key])
    loaded = load_bundle(out, device="cpu")  # hashes and every tensor check out
    sources = loaded.manifest.provenance["averaged_from"]
    assert [s["seed"] for s in sources] == [1, 2] and [s["weight"] for s in sources] == [0.75, 0.25]
    assert loaded.manifest.provenance["init_from"] == {"path": "parent"}
    assert not loaded.manifest.validation  # a new model: no served marks until it is scored
    assert not any(str(s["path"]).startswith("/") for s in sources)


def test_bundles_with_other_auto_encoders_are_refused(family: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, a, _ = family
    stranger = write_random_bundle(tmp_path / "stranger", seed=99)
    with pytest.raises(BundleError, match="same auto-encoders"):
        average_bundles([a, stranger], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_bundles_with_other_configs_are_refused(family: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, a, b = family
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / WEIGHTS_NAME).write_bytes((b / WEIGHTS_NAME).read_bytes())
    manifest = json.loads((b / "bundle.json").read_text())
    manifest["config"]["sampling"]["steps"] = 3
    (edited / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="config"):
        average_bundles([a, edited], tmp_path / "bad")


def test_averaged_state_checks_its_inputs() -> None:
    state = {"denoiser.w": torch.ones(2), "mask_ae.w": torch.zeros(1)}
    with pytest.raises(ValueError, match="at least two"):
        averaged_state([state])
    with pytest.raises(ValueError, match="2 bundles"):
        averaged_state([state, state], weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        averaged_state([state, state], weights=[1.0, -1.0])
    with pytest.raises(BundleError, match="other tensors"):
        averaged_state([state, {"denoiser.w": torch.ones(2)}])
    other = {"denoiser.w": torch.full((2,), 3.0), "mask_ae.w": torch.zeros(1)}
    assert torch.equal(averaged_state([state, other])["denoiser.w"], torch.full((2,), 2.0))
