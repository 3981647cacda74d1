"""ONNX Runtime backend: the bundle's three networks as ONNX graphs with a dynamic batch.

An export folder (``latentseg export-onnx --bundle B --out DIR``; default ``B/onnx``) holds::

    image_encoder.onnx   (B, C_window, H, W) image windows in [0, 1] -> scaled conditioning (B, C_image, h, w)
    denoiser.onnx        z_t, t (int64), z_image, target_ids (int64) -> (B, C_out, h, w)
    mask_decoder.onnx    scaled mask latent -> (B, 1, H, W) logits (1/scale folded in)
    onnx.json            ties the export to the bundle's ``weights_sha256``, with each file's sha256

:class:`OnnxBundle` exposes what the sampling pipeline uses from a
:class:`model.bundle.loaded.LoadedBundle` (``encode_image``, ``denoiser``, ``decode_mask``, ``device``,
``latent_scale``, ``config``, ``process``, name, vocabulary, trained targets), so
``model.inference.pipeline.segment_volume`` / ``segment_file`` run unchanged on either backend. A stale
export (the bundle's weights changed since) or an edited graph is refused with a
:class:`~model.errors.BundleError`.

Threads: each session runs ``intra_op_num_threads`` = ``threads`` (default: torch's
intra-op thread count, i.e. the physical cores), one inter-op thread, sequential execution,
and no spin-waiting between runs, because torch runs the (small) diffusion arithmetic between
denoiser calls on the same cores and spinning ORT threads would steal them.

Providers: ``CUDAExecutionProvider`` first when onnxruntime-gpu offers it, else CPU.
``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install into the same package; pick one extra.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from model.bundle.loaded import BundleInfo, LoadedBundle, load_bundle, read_manifest_and_config, resolve_bundle_path
from model.bundle.manifest import BundleManifest, file_sha256, read_json, replacing_folder
from model.bundle.config import ModelConfig
from model.errors import BundleError
from model.nets.autoencoder import image_condition

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "DEFAULT_ONNX_DIRNAME",
    "ONNX_MANIFEST_NAME",
    "Backend",
    "OnnxBundle",
    "default_onnx_dir",
    "export_onnx",
    "load_backend",
    "load_onnx_bundle",
    "onnx_providers",
]

log = logging.getLogger(__name__)

Backend = Literal["torch", "onnx"]
ONNX_MANIFEST_NAME = "onnx.json"
ONNX_FORMAT = "latentseg-onnx"
ONNX_SCHEMA_VERSION = 1
DEFAULT_ONNX_DIRNAME = "onnx"
DEFAULT_OPSET = 18
GRAPH_FILES: dict[str, str] = {
    "image_encoder": "image_encoder.onnx",
    "denoiser": "denoiser.onnx",
    "mask_decoder": "mask_decoder.onnx",
}
PARITY_TOLERANCE = 1e-3  # max |onnx - torch| accepted when an export verifies itself


# ----------------------------------------------------------------------------- export
class _ImageEncoder(nn.Module):
    def __init__(self, bundle: LoadedBundle) -> None:
        super().__init__()
        self.vae = bundle.networks.image_vae
        self.scale = float(bundle.latent_scale.image)
        self.pixel_factor = bundle.config.image_pixel_factor
        self.denoiser = bundle.networks.denoiser  # only its pixel stem, if any, runs here

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.denoiser.condition(image_condition(self.vae, image, self.scale, pixel_factor=self.pixel_factor))


class _MaskDecoder(nn.Module):
    def __init__(self, bundle: LoadedBundle) -> None:
        super().__init__()
        self.mask_ae = bundle.networks.mask_ae
        self.scale = float(bundle.latent_scale.mask)

    def forward(self, z_mask: torch.Tensor) -> torch.Tensor:
        return self.mask_ae.decode(z_mask / self.scale)


class _Denoiser(nn.Module):
    def __init__(self, bundle: LoadedBundle) -> None:
        super().__init__()
        self.net = bundle.networks.denoiser

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, z_image: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        return self.net(z_t, t, z_image, target_ids)


def _example_inputs(config: ModelConfig, batch: int, generator: torch.Generator) -> dict[str, tuple[torch.Tensor, ...]]:
    c, h, w = config.latent_shape
    ph, pw = config.preprocess.patch_size
    return {
        "image_encoder": (torch.rand(batch, config.image_window_channels, ph, pw, generator=generator),),
        "denoiser": (
            torch.randn(batch, c, h, w, generator=generator),
            torch.randint(0, config.diffusion.num_timesteps, (batch,), generator=generator),
            torch.randn(batch, config.encoded_image_channels, h, w, generator=generator),
            torch.randint(1, 10, (batch,), generator=generator),
        ),
        "mask_decoder": (torch.randn(batch, c, h, w, generator=generator),),
    }


_INPUT_NAMES: dict[str, list[str]] = {
    "image_encoder": ["image"],
    "denoiser": ["z_t", "t", "z_image", "target_ids"],
    "mask_decoder": ["z_mask"],
}
_OUTPUT_NAMES: dict[str, list[str]] = {
    "image_encoder": ["z_image"],
    "denoiser": ["output"],
    "mask_decoder": ["logits"],
}


def _export_graph(module: nn.Module, name: str, example: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    inputs, outputs = _INPUT_NAMES[name], _OUTPUT_NAMES[name]
    dynamic_axes = {n: {0: "batch"} for n in inputs + outputs}
    # The TorchScript exporter (dynamo=False) handles MONAI's SDPA attention and gives one
    # self-contained file; the dynamo exporter needs onnxscript and writes external data.
    with warnings.catch_warnings():  # tracer and deprecation chatter about MONAI internals, not actionable
        warnings.simplefilter("ignore")
        _torch_onnx_export(module, example, path, inputs, outputs, dynamic_axes, opset)


def _torch_onnx_export(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    torch.onnx.export(
        module,
        example,
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=dynamic_axes,
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def export_onnx(
    bundle_path: str | Path | None,
    out_dir: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
) -> Path:
    """Export a bundle's networks to ``out_dir`` (default ``<bundle>/onnx``) and return it.

    The folder is written atomically (temp folder renamed into place). With ``verify``, each
    graph is run in ONNX Runtime at two batch sizes and compared with torch; an export whose
    outputs differ by more than ``PARITY_TOLERANCE`` is refused.
    """
    folder = resolve_bundle_path(bundle_path)
    bundle = load_bundle(folder, device="cpu")
    target = Path(out_dir) if out_dir is not None else default_onnx_dir(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    modules: dict[str, nn.Module] = {
        "image_encoder": _ImageEncoder(bundle).eval(),
        "denoiser": _Denoiser(bundle).eval(),
        "mask_decoder": _MaskDecoder(bundle).eval(),
    }
    with replacing_folder(target) as tmp:
        errors: dict[str, float] = {}
        example = _example_inputs(bundle.config, 2, torch.Generator().manual_seed(0))
        for name, module in modules.items():
            _export_graph(module, name, example[name], tmp / GRAPH_FILES[name], opset)
        if verify:
            errors = _verify(modules, tmp, bundle.config)
        manifest = {
            "format": ONNX_FORMAT,
            "schema_version": ONNX_SCHEMA_VERSION,
            "bundle_name": bundle.name,
            "bundle_version": bundle.version,
            "weights_sha256": bundle.manifest.weights_sha256,
            "latent_scale": {"mask": bundle.latent_scale.mask, "image": bundle.latent_scale.image},
            "opset": opset,
            "files": {name: {"file": file, "sha256": file_sha256(tmp / file)} for name, file in GRAPH_FILES.items()},
            "verified_max_abs_error": errors,
            "exported_with": {"torch": torch.__version__, "onnxruntime": _ort_version()},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (tmp / ONNX_MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("exported %s %s to %s", bundle.name, bundle.version, target)
    return target


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


@torch.no_grad()
def _verify(modules: dict[str, nn.Module], folder: Path, config: ModelConfig) -> dict[str, float]:
    errors: dict[str, float] = {}
    for name, module in modules.items():
        session = _session(folder / GRAPH_FILES[name], threads=None, providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in (1, 3):
            inputs = _example_inputs(config, batch, torch.Generator().manual_seed(batch))[name]
            expected = module(*inputs).numpy()
            got = session.run(None, {n: x.numpy() for n, x in zip(_INPUT_NAMES[name], inputs, strict=True)})[0]
            if got.shape != expected.shape:
                raise BundleError(f"ONNX {name}: output shape {got.shape} != torch {expected.shape} at batch {batch}")
            worst = max(worst, float(np.abs(got - expected).max()))
        if not worst <= PARITY_TOLERANCE:
            raise BundleError(f"ONNX {name} differs from torch by {worst:.3g} (> {PARITY_TOLERANCE}); not exported")
        errors[name] = worst
    return errors


# ----------------------------------------------------------------------------- runtime
def default_onnx_dir(bundle_path: str | Path) -> Path:
    return Path(bundle_path) / DEFAULT_ONNX_DIRNAME


def onnx_providers(requested: Sequence[str] | None = None) -> list[str]:
    """``requested`` if given; else CUDA (when onnxruntime-gpu offers it) then CPU."""
    import onnxruntime

    if requested:
        return list(requested)
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: Path, *, threads: int | None, providers: Sequence[str] | None) -> onnxruntime.InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=onnx_providers(providers))


def _read_onnx_manifest(folder: Path) -> dict[str, Any]:
    path = folder / ONNX_MANIFEST_NAME
    data = read_json(path, f"no ONNX export in {folder} (missing {ONNX_MANIFEST_NAME}); run `latentseg export-onnx`")
    if data.get("format") != ONNX_FORMAT or data.get("schema_version") != ONNX_SCHEMA_VERSION:
        raise BundleError(f"{path}: not a latentseg ONNX export of schema {ONNX_SCHEMA_VERSION}")
    return data


def _to_numpy(x: torch.Tensor, dtype: type[np.generic]) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=dtype)


@dataclass
class OnnxBundle(BundleInfo):
    """A bundle whose networks run in ONNX Runtime; duck-types :class:`LoadedBundle` for sampling.

    Tensors in and out are torch CPU tensors (``device`` is CPU: ORT copies to the GPU itself
    when the CUDA provider runs).
    """

    path: Path
    onnx_dir: Path
    manifest: BundleManifest
    config: ModelConfig
    sessions: dict[str, Any]
    providers: tuple[str, ...]
    device: torch.device = torch.device("cpu")

    @property
    def backend(self) -> str:
        return "onnx"

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(self.sessions[name].run(None, feeds)[0])

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C_window, H, W) image windows in [0, 1] -> scaled conditioning (B, C_image, h, w)."""
        return self._run("image_encoder", {"image": _to_numpy(image, np.float32)})

    def decode_mask(self, z_mask: torch.Tensor) -> torch.Tensor:
        """Scaled mask latent -> (B, 1, H, W) logits."""
        return self._run("mask_decoder", {"z_mask": _to_numpy(z_mask, np.float32)})

    def denoiser(self, z_t: torch.Tensor, t: torch.Tensor, z_image: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        return self._run(
            "denoiser",
            {
                "z_t": _to_numpy(z_t, np.float32),
                "t": _to_numpy(t, np.int64),
                "z_image": _to_numpy(z_image, np.float32),
                "target_ids": _to_numpy(target_ids, np.int64),
            },
        )


def load_onnx_bundle(
    bundle_path: str | Path | None = None,
    onnx_dir: str | Path | None = None,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> OnnxBundle:
    """Open a bundle's ONNX export (default ``<bundle>/onnx``); refuse a stale or altered one."""
    folder = resolve_bundle_path(bundle_path)
    manifest, config = read_manifest_and_config(folder)
    export = Path(onnx_dir) if onnx_dir is not None else default_onnx_dir(folder)
    data = _read_onnx_manifest(export)
    if data.get("weights_sha256") != manifest.weights_sha256:
        raise BundleError(
            f"stale ONNX export in {export}: it was exported from weights {str(data.get('weights_sha256'))[:12]}…, "
            f"the bundle {folder} now has {manifest.weights_sha256[:12]}…; re-run `latentseg export-onnx`"
        )
    scale = data.get("latent_scale", {})
    if (scale.get("mask"), scale.get("image")) != (manifest.latent_scale.mask, manifest.latent_scale.image):
        raise BundleError(f"stale ONNX export in {export}: latent scale differs from the bundle's")
    sessions: dict[str, Any] = {}
    for name, file in GRAPH_FILES.items():
        entry = data.get("files", {}).get(name, {})
        path = export / file
        if not path.is_file():
            raise BundleError(f"ONNX export {export} lacks {file}")
        if entry.get("sha256") != file_sha256(path):
            raise BundleError(f"{path} does not match the sha256 in {ONNX_MANIFEST_NAME} (corrupted or replaced)")
        sessions[name] = _session(path, threads=threads, providers=providers)
    used = tuple(sessions["denoiser"].get_providers())
    log.info("ONNX backend for %s %s from %s on %s", manifest.name, manifest.version, export, ", ".join(used))
    return OnnxBundle(path=folder, onnx_dir=export, manifest=manifest, config=config, sessions=sessions, providers=used)


def load_backend(
    bundle_path: str | Path | None = None,
    backend: Backend | str = "torch",
    *,
    device: str | torch.device | None = None,
    onnx_dir: str | Path | None = None,
    threads: int | None = None,
) -> LoadedBundle | OnnxBundle:
    """Load a bundle for inference with the ``torch`` or ``onnx`` backend.

    ``device`` applies to torch only (ONNX picks its provider: CUDA when available, else
    CPU). ``threads`` sets ONNX Runtime's intra-op threads (default: torch's thread count).
    """
    if backend == "torch":
        return load_bundle(bundle_path, device=device)
    if backend == "onnx":
        return load_onnx_bundle(bundle_path, onnx_dir, threads=threads)
    raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
