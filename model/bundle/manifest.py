"""The torch-free half of a bundle: reading and validating ``bundle.json``.

A bundle is a folder::

    bundle.json           schema version, name, version, full ModelConfig, vocabulary (+ sha256),
                          trained targets, latent scale factors, provenance, weights sha256
    weights.safetensors   mask_ae.*, image_vae.*, denoiser.* tensors

The API process reads only the manifest (to know the bundle's name, version and trained
targets) and never imports torch.

It is also the one home of the sampling parameters' ranges (:func:`check_sampling`): the CLI, the
API (before anything is queued), the worker and the pipeline all check ``ensemble`` and ``steps``
with it. Their defaults are the bundle's ``config.sampling`` section, never a setting.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import BundleError, InputError
from model.targets.vocabulary import Vocabulary

SCHEMA_VERSION = 1
BUNDLE_FORMAT = "latentseg-bundle"
MANIFEST_NAME = "bundle.json"
WEIGHTS_NAME = "weights.safetensors"

# What the model accepts (bundle configs, requests): inclusive (low, high).
SAMPLING_RANGES: dict[str, tuple[int, int]] = {"ensemble": (1, 64), "steps": (1, 1000)}


@dataclass(frozen=True)
class LatentScale:
    """Multipliers applied to encoder outputs so latents have unit variance (LDM's scale_factor)."""

    mask: float
    image: float


@dataclass(frozen=True)
class BundleManifest:
    name: str
    version: str
    config: dict[str, Any]
    vocabulary: Vocabulary
    trained_targets: tuple[str, ...]
    latent_scale: LatentScale
    weights_sha256: str
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def served_targets(self) -> tuple[str, ...]:
        """Trained targets the bundle serves: all of them, less those its ``validation`` section marks
        ``served: false`` (a left-out-patient Dice under the bar it records, so the service refuses them
        rather than return noise)."""
        marks = self.validation.get("targets", {})
        return tuple(t for t in self.trained_targets if marks.get(t, {}).get("served", True))

    def unserved_reason(self, target: str) -> str | None:
        """Why a trained target is not served (None when it is)."""
        mark = self.validation.get("targets", {}).get(target, {})
        if mark.get("served", True):
            return None
        dice = mark.get("dice")
        bar = self.validation.get("min_dice")
        measured = f"left-out validation Dice {dice:.2f}" if isinstance(dice, (int, float)) else "no left-out validation Dice"
        return f"{measured}" + (f" (< {bar})" if bar is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "config": self.config,
            "vocabulary": self.vocabulary.to_dict(),
            "vocabulary_sha256": self.vocabulary.sha256(),
            "trained_targets": list(self.trained_targets),
            "latent_scale": {"mask": self.latent_scale.mask, "image": self.latent_scale.image},
            "weights_sha256": self.weights_sha256,
            "provenance": self.provenance,
            **({"validation": self.validation} if self.validation else {}),
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path, missing: str) -> dict[str, Any]:
    """``path`` parsed as JSON; a :class:`BundleError` saying ``missing`` when there is no such file,
    or naming the file when it is not valid JSON."""
    if not path.is_file():
        raise BundleError(missing)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    return data


@contextmanager
def replacing_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` to fill; when the block ends it replaces ``target``
    (an old ``target`` is removed first), and when the block raises it is removed instead."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def demo_bundle_path() -> Path:
    """Where the demo bundle ships inside the package."""
    return Path(__file__).resolve().parents[1] / "bundles" / "demo"


def read_manifest(path: str | Path) -> BundleManifest:
    """Read and validate ``bundle.json`` strictly; any mismatch is a :class:`BundleError`."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_NAME
    data = read_json(manifest_path, f"not a latentseg bundle: {folder} has no {MANIFEST_NAME}")
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: format is {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: schema_version {data.get('schema_version')} is not supported (this code reads {SCHEMA_VERSION})"
        )
    required = ("name", "version", "config", "vocabulary", "vocabulary_sha256", "trained_targets", "latent_scale", "weights_sha256")
    missing = [key for key in required if key not in data]
    if missing:
        raise BundleError(f"{manifest_path} lacks {', '.join(missing)}")
    vocabulary = Vocabulary.from_dict(data["vocabulary"])
    if vocabulary.sha256() != data["vocabulary_sha256"]:
        raise BundleError(f"{manifest_path}: vocabulary does not match its sha256 (edited or corrupted)")
    unknown = [name for name in data["trained_targets"] if name not in vocabulary.names()]
    if unknown:
        raise BundleError(f"{manifest_path}: trained_targets not in its vocabulary: {', '.join(unknown)}")
    scale = data["latent_scale"]
    if not all(isinstance(scale.get(k), (int, float)) and scale[k] > 0 for k in ("mask", "image")):
        raise BundleError(f"{manifest_path}: latent_scale must give positive 'mask' and 'image' factors")
    return BundleManifest(
        name=str(data["name"]),
        version=str(data["version"]),
        config=data["config"],
        vocabulary=vocabulary,
        trained_targets=tuple(data["trained_targets"]),
        latent_scale=LatentScale(mask=float(scale["mask"]), image=float(scale["image"])),
        weights_sha256=str(data["weights_sha256"]),
        provenance=dict(data.get("provenance", {})),
        schema_version=int(data["schema_version"]),
        validation=_validation(data.get("validation", {}), manifest_path, tuple(data["trained_targets"])),
    )


def _validation(section: Any, manifest_path: Path, trained: tuple[str, ...]) -> dict[str, Any]:
    """The optional ``validation`` section: ``{"min_dice": 0.5, "method": ..., "targets": {name: {"dice": x,
    "served": bool, ...}}}``; every target it names must be trained and ``served`` a boolean."""
    if not section:
        return {}
    if not isinstance(section, dict) or not isinstance(section.get("targets", {}), dict):
        raise BundleError(f"{manifest_path}: validation must be a mapping with a 'targets' mapping")
    for name, mark in section.get("targets", {}).items():
        if name not in trained:
            raise BundleError(f"{manifest_path}: validation names {name!r}, which is not a trained target")
        if not isinstance(mark, dict) or not isinstance(mark.get("served", True), bool):
            raise BundleError(f"{manifest_path}: validation.targets.{name}.served must be true or false")
    return dict(section)


# ---------------------------------------------------------------- sampling parameters


class SamplingRangeError(InputError):
    """A sampling parameter outside the model's range or the operator's cap (the API: 422, naming both)."""

    detail_fields = ("parameter", "allowed")

    def __init__(self, parameter: str, value: object, allowed: tuple[int, int], cap: str | None = None) -> None:
        self.parameter, self.value, self.allowed = parameter, value, allowed
        why = f" (this server's cap, {cap})" if cap else ""
        super().__init__(f"{parameter} must be an integer in {allowed[0]}..{allowed[1]}{why}, got {value!r}")


@dataclass(frozen=True)
class SamplingCaps:
    """Operators' upper bounds (``LATENTSEG_MAX_ENSEMBLE``, ``LATENTSEG_MAX_STEPS``); None: the model's range."""

    max_ensemble: int | None = None
    max_steps: int | None = None


def check_sampling(ensemble: int | None, steps: int | None, caps: SamplingCaps = SamplingCaps()) -> None:
    """The one range check of ``ensemble`` and ``steps`` (None: not given, the bundle's default applies):
    the model's :data:`SAMPLING_RANGES`, narrowed by ``caps``; raises :class:`SamplingRangeError`."""
    for name, value, cap in (("ensemble", ensemble, caps.max_ensemble), ("steps", steps, caps.max_steps)):
        if value is None:
            continue
        low, high = SAMPLING_RANGES[name]
        capped = cap is not None and cap < high
        allowed = (low, cap if capped and cap is not None else high)
        if not isinstance(value, int) or isinstance(value, bool) or not allowed[0] <= value <= allowed[1]:
            raise SamplingRangeError(name, value, allowed, f"LATENTSEG_MAX_{name.upper()}" if capped else None)


def resolve_sampling(
    defaults: Any, ensemble: int | None, steps: int | None, caps: SamplingCaps = SamplingCaps()
) -> tuple[int, int]:
    """``(ensemble, steps)``: the given values, else the bundle's ``defaults`` (its ``config.sampling``:
    anything with ``ensemble`` and ``steps``), checked by :func:`check_sampling`."""
    chosen = (defaults.ensemble if ensemble is None else ensemble, defaults.steps if steps is None else steps)
    check_sampling(*chosen, caps)
    return chosen
