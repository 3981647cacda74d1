"""Average the weights of bundles fine-tuned from one parent (a "model soup", Wortsman et al. 2022).

Runs of one recipe that differ only in their seed land on left-out Dice that differ by up to a quarter
on these data (MODEL_CARD.md, seed to seed). Fine-tunes of the same parent with the same auto-encoders
stay in one basin of the loss, so the mean of their denoiser weights is a model whose predictions
are an average of theirs at the cost of one: a cheap way to buy back some of that variance.

Only denoisers can be averaged: every source must share the config, the vocabulary, the trained
targets, the latent scale factors and the auto-encoder weights bit for bit (their latent spaces
would otherwise differ, and a mean of two latent spaces is neither).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from model.bundle.loaded import LoadedBundle, load_bundle, save_bundle
from model.errors import BundleError
from training.provenance import portable_path

__all__ = ["average_bundles", "averaged_state", "normalised_weights"]

SHARED_PREFIXES = ("mask_ae.", "image_vae.")


def normalised_weights(count: int, weights: Sequence[float] | None) -> list[float]:
    """``weights`` (default: equal) checked against ``count`` sources and scaled to sum to one."""
    mix = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(mix) != count:
        raise ValueError(f"{len(mix)} weights for {count} bundles")
    if any(w < 0 for w in mix) or sum(mix) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {mix}")
    return [w / sum(mix) for w in mix]


def averaged_state(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None,
                   names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The weighted mean of the denoiser tensors; the auto-encoders' tensors must be equal in every state."""
    if len(states) < 2:
        raise ValueError("averaging needs at least two bundles")
    names = list(names) if names is not None else [f"bundle {i + 1}" for i in range(len(states))]
    mix = normalised_weights(len(states), weights)
    first = states[0]
    out: dict[str, torch.Tensor] = {}
    for name, state in zip(names[1:], states[1:], strict=True):
        if set(state) != set(first):
            missing = sorted(set(first) ^ set(state))[:3]
            raise BundleError(f"{name} holds other tensors than {names[0]} ({', '.join(missing)} ...)")
    for key, tensor in first.items():
        others = [state[key] for state in states[1:]]
        for name, other in zip(names[1:], others, strict=True):
            if other.shape != tensor.shape or other.dtype != tensor.dtype:
                raise BundleError(f"{key}: {name} has shape {tuple(other.shape)}, {names[0]} {tuple(tensor.shape)}")
        if key.startswith(SHARED_PREFIXES) or not tensor.is_floating_point():
            for name, other in zip(names[1:], others, strict=True):
                if not torch.equal(other, tensor):
                    raise BundleError(
                        f"{name} and {names[0]} differ in {key}: only denoisers trained on the same auto-encoders "
                        "(fine-tunes of one parent bundle) can be averaged")
            out[key] = tensor.clone()
            continue
        total = torch.zeros_like(tensor, dtype=torch.float64)
        for w, state in zip(mix, states, strict=True):
            total += w * state[key].to(torch.float64)
        out[key] = total.to(tensor.dtype)
    return out


def _check_compatible(bundles: Sequence[LoadedBundle]) -> None:
    first = bundles[0]
    for other in bundles[1:]:
        for what, a, b in (("config", first.manifest.config, other.manifest.config),
                           ("vocabulary", first.manifest.vocabulary.to_dict(), other.manifest.vocabulary.to_dict()),
                           ("trained targets", first.manifest.trained_targets, other.manifest.trained_targets),
                           ("latent scale factors", first.manifest.latent_scale, other.manifest.latent_scale)):
            if a != b:
                raise BundleError(f"{other.path} and {first.path} differ in their {what}: they cannot be averaged")


def average_bundles(sources: Sequence[str | Path], out: str | Path, *, weights: Sequence[float] | None = None,
                    name: str | None = None, version: str | None = None) -> Path:
    """Write a bundle at ``out`` whose denoiser is the (weighted) mean of the sources' denoisers.

    Served marks are not carried over: the average is a new model, to be scored on left-out cases and
    marked with ``latentseg set-served`` like any other.
    """
    paths = [Path(s) for s in sources]
    bundles = [load_bundle(p, device="cpu") for p in paths]
    if len(bundles) < 2:
        raise ValueError("averaging needs at least two bundles")
    _check_compatible(bundles)
    states = [b.networks.state_dict() for b in bundles]  # the tensors load_bundle read and checked
    tensors = averaged_state(states, weights, names=[str(p) for p in paths])
    first = bundles[0]
    first.networks.load_state_dict(tensors)
    mix = normalised_weights(len(paths), weights)
    provenance: dict[str, Any] = {
        "trained": True,
        "averaged_from": [
            {"path": portable_path(p), "name": b.manifest.name, "version": b.manifest.version, "weight": w,
             "seed": b.manifest.provenance.get("seed"), "weights_sha256": b.manifest.weights_sha256}
            for p, b, w in zip(paths, bundles, mix, strict=True)
        ],
    }
    for key in ("init_from", "exclude_cases", "data", "datasets"):
        values = [b.manifest.provenance.get(key) for b in bundles]
        if all(v == values[0] for v in values) and values[0] is not None:
            provenance[key] = values[0]
    return save_bundle(out, config=first.config, vocabulary=first.manifest.vocabulary, networks=first.networks,
                       latent_scale=first.manifest.latent_scale, trained_targets=first.manifest.trained_targets,
                       name=name or first.manifest.name, version=version or first.manifest.version,
                       provenance=provenance)
