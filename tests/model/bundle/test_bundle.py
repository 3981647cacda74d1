from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model.bundle.loaded import (
    LatentScale,
    LoadedBundle,
    build_networks,
    load_bundle,
    randomise_zero_parameters,
    save_bundle,
    write_random_bundle,
)
from model.bundle.manifest import MANIFEST_NAME, SCHEMA_VERSION, WEIGHTS_NAME, read_manifest
from model.bundle.config import DenoiserConfig, tiny_config
from model.errors import BundleError
from model.targets.vocabulary import default_vocabulary


@pytest.fixture()
def bundle_copy(random_bundle_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(random_bundle_path, tmp_path / "bundle"))


def edit_manifest(folder: Path, edit) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def outputs(bundle: LoadedBundle) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h, w = bundle.config.preprocess.patch_size
    c, hz, wz = bundle.config.latent_shape
    image = torch.rand(2, 1, h, w, generator=g)
    z = torch.randn(2, c, hz, wz, generator=g)
    z_image = bundle.encode_image(image)
    with torch.no_grad():
        eps = bundle.denoiser(z, torch.tensor([3, 700]), z_image, torch.tensor([1, 6]))
    return [z_image, eps, bundle.decode_mask(z)]


def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    config, vocab = tiny_config(), default_vocabulary()
    torch.manual_seed(1)
    nets = build_networks(config, vocab)
    for m in (nets.mask_ae, nets.image_vae, nets.denoiser):
        randomise_zero_parameters(m, torch.Generator().manual_seed(1))
        m.eval()
    path = save_bundle(tmp_path / "b", config=config, vocabulary=vocab, networks=nets,
                       latent_scale=LatentScale(mask=0.5, image=2.0), trained_targets=("liver", "spleen"),
                       name="t", version="1.2.3", provenance={"steps": 10})
    loaded = load_bundle(path, device="cpu")
    assert loaded.config == config
    assert loaded.trained_targets == ("liver", "spleen")
    assert loaded.latent_scale == LatentScale(mask=0.5, image=2.0)
    assert (loaded.name, loaded.version) == ("t", "1.2.3")
    assert loaded.manifest.provenance["steps"] == 10 and "created" in loaded.manifest.provenance
    assert loaded.vocabulary.sha256() == vocab.sha256()
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 64, 64, generator=g)
    z = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        from model.nets.autoencoder import encode_image_mean

        assert torch.equal(loaded.encode_image(image), encode_image_mean(nets.image_vae, image) * 2.0)
        assert torch.equal(loaded.decode_mask(z), nets.mask_ae.decode(z / 0.5))
        t, ids = torch.tensor([3, 700]), torch.tensor([1, 6])
        # The weights come back bit for bit; the outputs only to float rounding: on an Intel Xeon with
        # AMX (torch 2.13) the loaded U-Net's output was 7e-7 from the in-memory one (likely another
        # oneDNN kernel for the loaded tensors), while each network alone is deterministic.
        saved, back = nets.denoiser.state_dict(), loaded.networks.denoiser.state_dict()
        assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
        torch.testing.assert_close(loaded.denoiser(z, t, z, ids), nets.denoiser(z, t, z, ids), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in loaded.networks.denoiser.parameters())


def test_random_bundle_is_reproducible(random_bundle: LoadedBundle, tmp_path: Path) -> None:
    again = load_bundle(write_random_bundle(tmp_path / "again", seed=0), device="cpu")
    for a, b in zip(outputs(random_bundle), outputs(again), strict=True):
        assert torch.equal(a, b)
    other = load_bundle(write_random_bundle(tmp_path / "other", seed=1), device="cpu")
    assert not torch.equal(outputs(random_bundle)[1], outputs(other)[1])


def test_text_conditioned_bundle_round_trip(tmp_path: Path) -> None:
    base = tiny_config()
    config = base.model_copy(update={"denoiser": base.denoiser.model_copy(update={"conditioning": "text"})})
    config = type(config).from_dict(config.to_dict())  # re-validate
    loaded = load_bundle(write_random_bundle(tmp_path / "text", config=config), device="cpu")
    table = loaded.networks.denoiser.unet.class_embedding.table
    assert table.shape == (default_vocabulary().max_id + 1, DenoiserConfig().text_embedding_dim)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = loaded.denoiser(z, torch.tensor([500, 500]), z, torch.tensor([1, 6]))
    assert (out[0] - out[1]).abs().max() > 1e-4


def pixel_config():
    base = tiny_config()
    return base.model_copy(update={"denoiser": base.denoiser.model_copy(update={"image_pixels": True})})


def test_pixel_conditioned_bundle_sees_the_window_itself(tmp_path: Path) -> None:
    config = type(pixel_config()).from_dict(pixel_config().to_dict())
    f = config.image_vae.factor
    assert config.image_condition_channels == config.image_vae.latent_channels + f * f
    loaded = load_bundle(write_random_bundle(tmp_path / "pixels", config=config), device="cpu")
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, *config.preprocess.patch_size, generator=g)
    z_image = loaded.encode_image(image)
    c, h, w = config.latent_shape
    assert z_image.shape == (2, config.image_condition_channels, h, w)
    latent = config.image_vae.latent_channels
    # The trailing channels are the window, space-to-depth, in [-1, 1]: they give it back exactly.
    torch.testing.assert_close(torch.nn.functional.pixel_shuffle(z_image[:, latent:], f), image * 2 - 1)
    # ... and the denoiser reads them: a change in one pixel's value changes its prediction.
    brighter = image.clone()
    brighter[:, :, 5, 5] += 0.5
    z = torch.randn(2, c, h, w, generator=g)
    t, ids = torch.tensor([500, 500]), torch.tensor([1, 6])
    with torch.no_grad():
        out = loaded.denoiser(z, t, z_image, ids)
        moved = loaded.denoiser(z, t, loaded.encode_image(brighter), ids)
    assert (out - moved).abs().max() > 1e-4


def test_wrong_schema_version(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match="schema_version"):
        load_bundle(bundle_copy, device="cpu")


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a latentseg bundle"):
        load_bundle(tmp_path, device="cpu")
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path, device="cpu")


def test_edited_vocabulary_fails_its_hash(bundle_copy: Path) -> None:
    def rename(d: dict) -> None:
        d["vocabulary"]["targets"][0]["display"] = "Milz"

    edit_manifest(bundle_copy, rename)
    with pytest.raises(BundleError, match="vocabulary does not match its sha256"):
        load_bundle(bundle_copy, device="cpu")


def test_tampered_weights_fail_their_hash(bundle_copy: Path) -> None:
    weights = bundle_copy / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_copy, device="cpu")


def test_missing_weights(bundle_copy: Path) -> None:
    (bundle_copy / WEIGHTS_NAME).unlink()
    with pytest.raises(BundleError, match=WEIGHTS_NAME):
        load_bundle(bundle_copy, device="cpu")


def test_config_that_does_not_fit_the_weights(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda d: d["config"]["mask_ae"].update(base_channels=8))
    with pytest.raises(BundleError, match="mask_ae"):
        load_bundle(bundle_copy, device="cpu")


def test_invalid_config(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda d: d["config"]["preprocess"].update(patch_size=[60, 60]))
    with pytest.raises(BundleError, match="config is not valid"):
        load_bundle(bundle_copy, device="cpu")


def test_unknown_trained_target(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda d: d["trained_targets"].append("unicorn"))
    with pytest.raises(BundleError, match="unicorn"):
        load_bundle(bundle_copy, device="cpu")
    with pytest.raises(BundleError, match="unicorn"):
        config, vocab = tiny_config(), default_vocabulary()
        save_bundle(bundle_copy.parent / "x", config=config, vocabulary=vocab, networks=build_networks(config, vocab),
                    latent_scale=LatentScale(1.0, 1.0), trained_targets=("unicorn",), name="x", version="0")


def test_bad_latent_scale(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda d: d.update(latent_scale={"mask": 0.0, "image": 1.0}))
    with pytest.raises(BundleError, match="latent_scale"):
        load_bundle(bundle_copy, device="cpu")


def test_manifest_is_readable_without_weights(random_bundle_path: Path) -> None:
    manifest = read_manifest(random_bundle_path)
    assert manifest.schema_version == SCHEMA_VERSION
    assert len(manifest.trained_targets) == 32
    assert manifest.provenance["trained"] is False


def test_load_bundle_none_uses_the_environment(random_bundle_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("LATENTSEG_BUNDLE", str(random_bundle_path))
    assert load_bundle(None, device="cpu").path == random_bundle_path
    monkeypatch.setenv("LATENTSEG_BUNDLE", str(tmp_path / "nowhere"))
    with pytest.raises(BundleError, match="nowhere"):
        load_bundle(None, device="cpu")


def test_process_respacing_from_the_bundle(random_bundle: LoadedBundle) -> None:
    assert random_bundle.process().num_timesteps == random_bundle.config.sampling.steps
    assert random_bundle.process(7).num_timesteps == 7
    assert random_bundle.process(1000).num_timesteps == 1000
