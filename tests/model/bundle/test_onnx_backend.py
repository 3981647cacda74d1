"""ONNX Runtime backend: export, parity with torch (randomised weights), stale/altered exports refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model.bundle.loaded import LatentScale, LoadedBundle, load_bundle, save_bundle, write_random_bundle
from model.errors import BundleError
from model.bundle.onnx_backend import (
    ONNX_MANIFEST_NAME,
    OnnxBundle,
    export_onnx,
    load_backend,
    load_onnx_bundle,
    onnx_providers,
)
from model.inference.pipeline import SegmentationOptions, segment_volume
from model.bundle.config import tiny_config
from model.inference.preprocessing import Volume

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def scaled_bundle_path(random_bundle: LoadedBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random tiny bundle with non-unit latent scales, so the scales folded into the graphs matter."""
    return save_bundle(
        tmp_path_factory.mktemp("scaled") / "bundle", config=random_bundle.config, vocabulary=random_bundle.vocabulary,
        networks=random_bundle.networks, latent_scale=LatentScale(mask=0.6, image=1.7),
        trained_targets=random_bundle.trained_targets, name="random-scaled", version="0.0.1",
    )


@pytest.fixture(scope="module")
def torch_bundle(scaled_bundle_path: Path) -> LoadedBundle:
    return load_bundle(scaled_bundle_path, device="cpu")


@pytest.fixture(scope="module")
def onnx_dir(scaled_bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(scaled_bundle_path, tmp_path_factory.mktemp("onnx") / "export")


@pytest.fixture(scope="module")
def onnx_bundle(scaled_bundle_path: Path, onnx_dir: Path) -> OnnxBundle:
    return load_onnx_bundle(scaled_bundle_path, onnx_dir, threads=2)


def body_volume(shape=(40, 34, 6), seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    data = np.full(shape, -1000.0, np.float32)
    data[5:-5, 4:-4, :] = rng.normal(40, 80, (shape[0] - 10, shape[1] - 8, shape[2]))
    return Volume(data=data, affine=np.diag([-4.0, 4.0, 4.0, 1.0]))


def test_export_writes_graphs_and_a_manifest_tied_to_the_weights(onnx_dir: Path, torch_bundle: LoadedBundle) -> None:
    manifest = json.loads((onnx_dir / ONNX_MANIFEST_NAME).read_text())
    assert manifest["weights_sha256"] == torch_bundle.manifest.weights_sha256
    assert manifest["latent_scale"] == {"mask": 0.6, "image": 1.7}
    assert set(manifest["files"]) == {"image_encoder", "denoiser", "mask_decoder"}
    for entry in manifest["files"].values():
        assert (onnx_dir / entry["file"]).stat().st_size > 1000
    assert all(0 <= err <= 1e-3 for err in manifest["verified_max_abs_error"].values())


@pytest.mark.parametrize("batch", [1, 5])
def test_each_network_matches_torch_at_any_batch(torch_bundle: LoadedBundle, onnx_bundle: OnnxBundle, batch: int) -> None:
    g = torch.Generator().manual_seed(batch)
    c, h, w = torch_bundle.config.latent_shape
    image = torch.rand(batch, 1, *torch_bundle.config.preprocess.patch_size, generator=g)
    z = torch.randn(batch, c, h, w, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ids = torch.randint(1, 30, (batch,), generator=g)
    z_image = torch_bundle.encode_image(image)
    with torch.no_grad():
        pairs = [
            (onnx_bundle.encode_image(image), z_image),
            (onnx_bundle.denoiser(z, t, z_image, ids), torch_bundle.denoiser(z, t, z_image, ids)),
            (onnx_bundle.decode_mask(z), torch_bundle.decode_mask(z)),
        ]
    for got, expected in pairs:
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert expected.abs().max() > 1e-3  # randomised weights: a non-trivial output
        assert (got - expected).abs().max() < 1e-4


def test_segmentation_means_match_torch(torch_bundle: LoadedBundle, onnx_bundle: OnnxBundle) -> None:
    volume = body_volume()
    options = SegmentationOptions(ensemble=3, steps=3, seed=7)
    ref = segment_volume(torch_bundle, volume, "liver,pancreas", options)
    got = segment_volume(onnx_bundle, volume, "liver,pancreas", options)
    for name in ("liver", "pancreas"):
        assert ref.mean[name].max() > 0.05  # something was predicted, so the comparison means something
        assert np.abs(got.mean[name] - ref.mean[name]).max() < 1e-3
        assert np.abs(got.variance[name] - ref.variance[name]).max() < 1e-3
    assert np.array_equal(got.affine, ref.affine)


def test_stale_export_is_refused(random_bundle_path: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(random_bundle_path, bundle)
    export_onnx(bundle, verify=False)  # default place: BUNDLE/onnx
    assert isinstance(load_backend(bundle, "onnx"), OnnxBundle)
    stale = tmp_path / "stale-export"
    shutil.copytree(bundle / "onnx", stale)
    write_random_bundle(bundle, seed=1)  # new weights at the same path (the old BUNDLE/onnx goes with the folder)
    with pytest.raises(BundleError, match="stale ONNX export"):
        load_onnx_bundle(bundle, stale)
    with pytest.raises(BundleError, match="no ONNX export"):
        load_onnx_bundle(bundle)


def test_altered_graph_is_refused(scaled_bundle_path: Path, onnx_dir: Path, tmp_path: Path) -> None:
    altered = tmp_path / "altered"
    shutil.copytree(onnx_dir, altered)
    path = altered / "denoiser.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_onnx_bundle(scaled_bundle_path, altered)


def test_load_backend_choices(scaled_bundle_path: Path, onnx_dir: Path) -> None:
    torch_bundle = load_backend(scaled_bundle_path, "torch", device="cpu")
    assert isinstance(torch_bundle, LoadedBundle)
    onnx = load_backend(scaled_bundle_path, "onnx", onnx_dir=onnx_dir)
    assert isinstance(onnx, OnnxBundle)
    assert (onnx.name, onnx.trained_targets) == (torch_bundle.name, torch_bundle.trained_targets)
    assert onnx.providers[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="backend"):
        load_backend(scaled_bundle_path, "tensorflow")


def test_providers_prefer_cuda_only_when_offered() -> None:
    import onnxruntime

    providers = onnx_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in providers) == ("CUDAExecutionProvider" in onnxruntime.get_available_providers())
    assert onnx_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_process_matches_the_torch_bundle(torch_bundle: LoadedBundle, onnx_bundle: OnnxBundle) -> None:
    for steps in (1, 4, 1000):
        a, b = torch_bundle.process(steps), onnx_bundle.process(steps)
        assert np.array_equal(a.timestep_map, b.timestep_map) and np.allclose(a.betas, b.betas)




@pytest.mark.parametrize(("context_slices", "pixel_stem"), [(0, ()), (1, ()), (1, (4, 8, 8, 16))])
def test_pixel_conditioned_bundle_exports_with_parity(tmp_path: Path, context_slices: int, pixel_stem: tuple[int, ...]) -> None:
    base = tiny_config()
    update = {"image_pixels": True, "context_slices": context_slices, "pixel_stem": pixel_stem}
    denoiser = base.denoiser.model_copy(update=update)
    config = base.model_copy(update={"denoiser": denoiser})
    path = write_random_bundle(tmp_path / "pixels", seed=3, config=config)
    torch_side = load_bundle(path, device="cpu")
    onnx_side = load_onnx_bundle(path, export_onnx(path, tmp_path / "onnx"), threads=2)
    image = torch.rand(3, config.image_window_channels, *config.preprocess.patch_size, generator=torch.Generator().manual_seed(0))
    z_image = torch_side.encode_image(image)
    assert z_image.shape[1] == config.encoded_image_channels
    assert (onnx_side.encode_image(image) - z_image).abs().max() < 1e-4
    volume = body_volume()
    options = SegmentationOptions(ensemble=2, steps=3, seed=1)
    ref = segment_volume(torch_side, volume, "liver", options)
    got = segment_volume(onnx_side, volume, "liver", options)
    assert ref.mean["liver"].max() > 0.05
    assert np.abs(got.mean["liver"] - ref.mean["liver"]).max() < 1e-3
