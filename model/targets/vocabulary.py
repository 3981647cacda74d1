"""The segmentation vocabulary: the single source of truth for what latentseg can segment.

Stdlib only (no torch, no numpy), so the API process, the CLI, training and model bundles all
import the same definitions and can never drift apart. This module is the schema (targets,
dataset label maps, size priors, their checks and lookups); the shipped rows are in
:mod:`model.targets.tables`.

Targets
    Each :class:`Target` has a stable integer ``id`` (1..N, never reused: a retired target keeps
    its id reserved), a snake_case ``name`` (the only way targets travel through APIs), a human
    ``display`` label, synonyms users may type, and DICOM-SEG codes. The network's class
    embedding table is indexed by ``id`` and sized ``max_id + 1`` (row 0 is unused).

Laterality
    ``side`` is the *patient's* side ("left" / "right"), never the image's. Codes follow the
    dcmqi / TotalSegmentator convention: a lateral structure carries the generic SNOMED CT code
    (e.g. Kidney 64033007) and its ``side`` becomes the DICOM SegmentedPropertyTypeModifier
    (:attr:`Target.laterality`: Left 7771000 / Right 24028007).

Dataset label maps (the paper's "mapping table")
    A :class:`DatasetLabelMap` says which integer value in a dataset's label files is which
    vocabulary target. Several values may map to one target (TotalSegmentator's lung lobes all
    map to ``lung_left`` / ``lung_right``). A label covering both sides (KiTS "kidney",
    AbdomenCT-1K "kidney", WORD "adrenal") is a *lateral split*: the reader assigns its voxels to
    the left or right target by the patient's side of the body midline.

Lesions and their organs
    In these datasets a tumour or cyst voxel carries the lesion's value only, yet it lies inside
    its ``within`` organ. The training reader therefore builds an organ mask as the organ's
    values united with the values of every contained lesion on the same side (for a lateral
    split, the lesion voxels are split by side as well). ``kidney_left`` in KiTS23 is thus
    "kidney ∪ tumour ∪ cyst, left half"; ``kidney_tumor`` stays just the tumour.

Negatives
    A target that is not in a dataset's :attr:`DatasetLabelMap.annotated` is *unknown* in that
    dataset, never a negative: the MSD liver set says nothing about the spleen, and a case with
    no tumour label in a dataset that does not annotate tumours is not evidence of "no tumour".
    Only annotated targets may be trained as empty masks.

Caveats
    AMOS22 label 15 is "prostate/uterus"; it is mapped to ``prostate``, which is wrong for
    female patients (the reader may drop it where the patient's sex is known to be female).
    KiTS19 is deliberately not an alias of KiTS23: it has no cyst label (cysts are "kidney").
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from model.errors import UserError
from model.targets import tables

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "CYST",
    "Code",
    "DatasetLabelMap",
    "LEFT",
    "MORPHOLOGICALLY_ALTERED_STRUCTURE",
    "NEOPLASM",
    "RIGHT",
    "SizePrior",
    "Target",
    "TargetKind",
    "UnknownDatasetError",
    "UnknownTargetError",
    "Vocabulary",
    "default_vocabulary",
    "normalise_name",
    "size_prior",
    "usual_side",
]

FORMAT = "latentseg.vocabulary"
FORMAT_VERSION = 1

_SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
# British -> American spellings, applied to every lookup key and every query alike.
_SPELLINGS: tuple[tuple[str, str], ...] = (
    ("tumour", "tumor"),
    ("oesophag", "esophag"),
    ("coeliac", "celiac"),
)
_SIDES = ("left", "right")


class TargetKind(StrEnum):
    ORGAN = "organ"
    TUMOUR = "tumour"
    CYST = "cyst"


@dataclass(frozen=True)
class Code:
    """A coded concept for DICOM (value, coding scheme designator, meaning)."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for attr in ("value", "scheme", "meaning"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr):
                raise ValueError(f"Code.{attr} must be a non-empty string, got {getattr(self, attr)!r}")

    def to_dict(self) -> dict[str, str]:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Code:
        return cls(value=d["value"], scheme=d["scheme"], meaning=d["meaning"])


ANATOMICAL_STRUCTURE = Code(*tables.ANATOMICAL_STRUCTURE)
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code(*tables.MORPHOLOGICALLY_ALTERED_STRUCTURE)
NEOPLASM = Code(*tables.NEOPLASM)
CYST = Code(*tables.CYST)
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")


def normalise_name(text: str) -> str:
    """Canonical lookup key: lower case, runs of non-alphanumerics -> "_", American spelling.

    "Left Kidney" -> "left_kidney"; "gall-bladder" -> "gall_bladder";
    "Pancreatic tumour" -> "pancreatic_tumor"; "kidney (L)" -> "kidney_l".
    """
    key = _NON_ALNUM.sub("_", text.strip().lower()).strip("_")
    for british, american in _SPELLINGS:
        key = key.replace(british, american)
    return key


def _dataset_key(text: str) -> str:
    return _NON_ALNUM.sub("_", text.strip().lower()).strip("_")


@dataclass(frozen=True)
class Target:
    """One segmentation target. See the module docstring for ``side`` and ``within``."""

    id: int
    name: str
    display: str
    kind: TargetKind
    synonyms: tuple[str, ...]
    code: Code | None
    category: Code
    side: str | None = None
    within: tuple[str, ...] = ()
    # One connected piece in every patient (a solid organ, a main vessel): post-processing may
    # keep only the largest connected component of its mask. False for lesions, which may be
    # many, and for structures a segmentation often breaks (small vessels, bowel).
    connected: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 1:
            raise ValueError(f"target id must be a positive int, got {self.id!r}")
        if not isinstance(self.name, str) or not _SNAKE_CASE.match(self.name):
            raise ValueError(f"target name must be snake_case, got {self.name!r}")
        if not isinstance(self.display, str) or not self.display.strip():
            raise ValueError(f"target {self.name!r}: display must be a non-empty string")
        if not isinstance(self.kind, TargetKind):
            raise ValueError(f"target {self.name!r}: kind must be a TargetKind, got {self.kind!r}")
        if not isinstance(self.synonyms, tuple) or not all(
            isinstance(s, str) and normalise_name(s) for s in self.synonyms
        ):
            raise ValueError(f"target {self.name!r}: synonyms must be a tuple of non-empty strings")
        if self.code is not None and not isinstance(self.code, Code):
            raise ValueError(f"target {self.name!r}: code must be a Code or None")
        if not isinstance(self.category, Code):
            raise ValueError(f"target {self.name!r}: category must be a Code")
        if self.side is not None and self.side not in _SIDES:
            raise ValueError(f"target {self.name!r}: side must be 'left', 'right' or None, got {self.side!r}")
        if not isinstance(self.within, tuple) or not all(isinstance(w, str) for w in self.within):
            raise ValueError(f"target {self.name!r}: within must be a tuple of target names")
        if self.name in self.within:
            raise ValueError(f"target {self.name!r} cannot lie within itself")
        if not isinstance(self.connected, bool):
            raise ValueError(f"target {self.name!r}: connected must be a bool")
        if self.connected and self.is_lesion:
            raise ValueError(f"target {self.name!r}: a lesion cannot be marked connected (there may be several)")

    @property
    def is_lesion(self) -> bool:
        """True for tumours and cysts (structures that lie ``within`` an organ)."""
        return self.kind is not TargetKind.ORGAN

    @property
    def laterality(self) -> Code | None:
        """The DICOM SegmentedPropertyTypeModifier for ``side`` (Left / Right), or None."""
        if self.side is None:
            return None
        return LEFT if self.side == "left" else RIGHT

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "display": self.display,
            "kind": self.kind.value,
            "synonyms": list(self.synonyms),
            "code": None if self.code is None else self.code.to_dict(),
            "category": self.category.to_dict(),
            "side": self.side,
            "within": list(self.within),
            # Written only when set, so vocabularies saved before the field existed keep their hash.
            **({"connected": True} if self.connected else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Target:
        return cls(
            id=d["id"],
            name=d["name"],
            display=d["display"],
            kind=TargetKind(d["kind"]),
            synonyms=tuple(d["synonyms"]),
            code=None if d["code"] is None else Code.from_dict(d["code"]),
            category=Code.from_dict(d["category"]),
            side=d["side"],
            within=tuple(d["within"]),
            connected=d.get("connected", False),
        )


@dataclass(frozen=True)
class DatasetLabelMap:
    """One row of the mapping table: label values in a dataset's files -> vocabulary targets."""

    name: str
    labels: tuple[tuple[int, str], ...]
    lateral_splits: tuple[tuple[int, str, str], ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SNAKE_CASE.match(self.name):
            raise ValueError(f"dataset name must be snake_case, got {self.name!r}")
        values: list[int] = [entry[0] for entry in self.labels] + [entry[0] for entry in self.lateral_splits]
        for entry in self.labels:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], str)):
                raise ValueError(f"dataset {self.name!r}: label entries are (value, target), got {entry!r}")
        for entry in self.lateral_splits:
            if not (
                isinstance(entry, tuple) and len(entry) == 3 and all(isinstance(n, str) for n in entry[1:])
            ):
                raise ValueError(
                    f"dataset {self.name!r}: lateral splits are (value, left_target, right_target), got {entry!r}"
                )
            if entry[1] == entry[2]:
                raise ValueError(f"dataset {self.name!r}: lateral split {entry!r} needs two different targets")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"dataset {self.name!r}: label values must be ints >= 1, got {value!r}")
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"dataset {self.name!r}: label values listed more than once: {duplicates}")
        if not values:
            raise ValueError(f"dataset {self.name!r} maps no labels")
        if not isinstance(self.aliases, tuple) or not all(isinstance(a, str) and a.strip() for a in self.aliases):
            raise ValueError(f"dataset {self.name!r}: aliases must be a tuple of non-empty strings")

    @property
    def annotated(self) -> frozenset[str]:
        """Every target this dataset annotates: exactly the names in ``labels`` and ``lateral_splits``."""
        names = {target for _, target in self.labels}
        for _, left, right in self.lateral_splits:
            names.update((left, right))
        return frozenset(names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": [[value, target] for value, target in self.labels],
            "lateral_splits": [[value, left, right] for value, left, right in self.lateral_splits],
            "aliases": list(self.aliases),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetLabelMap:
        return cls(
            name=d["name"],
            labels=tuple((int(v), str(t)) for v, t in d["labels"]),
            lateral_splits=tuple((int(v), str(lt), str(rt)) for v, lt, rt in d["lateral_splits"]),
            aliases=tuple(d["aliases"]),
        )


class UnknownTargetError(UserError, ValueError):
    """One or more target names are not in the vocabulary; lists them all, with close matches."""

    detail_fields = ("unknown", "valid", "suggestions")  # the API's structured detail

    def __init__(
        self, unknown: Sequence[str], suggestions: Mapping[str, list[str]], valid: Sequence[str]
    ) -> None:
        self.unknown = tuple(unknown)
        self.suggestions = {k: list(v) for k, v in suggestions.items()}
        self.valid = tuple(valid)
        parts = []
        for name in self.unknown:
            close = self.suggestions.get(name) or []
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            parts.append(f"{name!r}{hint}")
        noun = "target" if len(self.unknown) == 1 else "targets"
        super().__init__(f"unknown {noun}: {'; '.join(parts)}. Valid targets: {', '.join(self.valid)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.unknown, self.suggestions, self.valid))


class UnknownDatasetError(UserError, ValueError):
    """A dataset name or alias is not in the mapping table; lists the valid names."""

    def __init__(self, name: str, valid: Sequence[str], suggestions: Sequence[str] = ()) -> None:
        self.name = name
        self.valid = tuple(valid)
        self.suggestions = list(suggestions)
        hint = f" (did you mean: {', '.join(self.suggestions)}?)" if self.suggestions else ""
        super().__init__(f"unknown dataset {name!r}{hint}. Valid datasets: {', '.join(self.valid)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.valid, self.suggestions))


@dataclass(frozen=True)
class Vocabulary:
    """Targets plus dataset label maps, validated on construction."""

    targets: tuple[Target, ...]
    datasets: tuple[DatasetLabelMap, ...] = ()
    _by_key: Mapping[str, Target] = field(init=False, repr=False, compare=False)
    _by_id: Mapping[int, Target] = field(init=False, repr=False, compare=False)
    _dataset_by_key: Mapping[str, DatasetLabelMap] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.targets, tuple) or not self.targets:
            raise ValueError("a vocabulary needs a non-empty tuple of targets")
        if not isinstance(self.datasets, tuple):
            raise ValueError("datasets must be a tuple")
        by_id: dict[int, Target] = {}
        by_name: dict[str, Target] = {}
        for target in self.targets:
            if not isinstance(target, Target):
                raise ValueError(f"not a Target: {target!r}")
            if target.id in by_id:
                raise ValueError(f"target id {target.id} used by both {by_id[target.id].name!r} and {target.name!r}")
            if target.name in by_name:
                raise ValueError(f"target name {target.name!r} listed twice")
            by_id[target.id] = target
            by_name[target.name] = target
        for target in self.targets:
            for organ in target.within:
                if organ not in by_name:
                    raise ValueError(f"target {target.name!r} lies within unknown target {organ!r}")
        # Names first, so a synonym can never shadow another target's name.
        by_key: dict[str, Target] = {normalise_name(t.name): t for t in self.targets}
        if len(by_key) != len(self.targets):
            raise ValueError("two target names normalise to the same key")
        for target in self.targets:
            for text in (target.display, *target.synonyms):
                key = normalise_name(text)
                owner = by_key.setdefault(key, target)
                if owner is not target:
                    raise ValueError(
                        f"{text!r} of target {target.name!r} collides with target {owner.name!r} (key {key!r})"
                    )
        dataset_by_key: dict[str, DatasetLabelMap] = {}
        for dataset in self.datasets:
            if not isinstance(dataset, DatasetLabelMap):
                raise ValueError(f"not a DatasetLabelMap: {dataset!r}")
            missing = sorted(dataset.annotated - by_name.keys())
            if missing:
                raise ValueError(f"dataset {dataset.name!r} refers to unknown targets: {missing}")
            for _, left, right in dataset.lateral_splits:
                if (by_name[left].side, by_name[right].side) != ("left", "right"):
                    raise ValueError(
                        f"dataset {dataset.name!r}: lateral split needs a left then a right target, "
                        f"got {left!r}, {right!r}"
                    )
            for text in (dataset.name, *dataset.aliases):
                key = _dataset_key(text)
                owner = dataset_by_key.setdefault(key, dataset)
                if owner is not dataset:
                    raise ValueError(f"dataset alias {text!r} of {dataset.name!r} collides with {owner.name!r}")
        object.__setattr__(self, "_by_key", MappingProxyType(by_key))
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))
        object.__setattr__(self, "_dataset_by_key", MappingProxyType(dataset_by_key))

    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __iter__(self) -> Iterator[Target]:
        return iter(self.targets)

    @property
    def max_id(self) -> int:
        """Largest target id; class-embedding tables are sized ``max_id + 1``."""
        return max(t.id for t in self.targets)

    def get(self, text: str) -> Target:
        """Target by name, display label or synonym (case, spacing, hyphens and tumour/tumor ignored)."""
        if not isinstance(text, str):
            raise TypeError(f"target names are strings, got {type(text).__name__}")
        target = self._by_key.get(normalise_name(text))
        if target is None:
            raise UnknownTargetError([text], {text: self._suggest(text)}, self.names())
        return target

    def by_id(self, target_id: int) -> Target:
        try:
            return self._by_id[target_id]
        except KeyError:
            raise KeyError(f"no target with id {target_id!r}; ids are {sorted(self._by_id)}") from None

    def resolve(self, spec: str | Sequence[str]) -> tuple[Target, ...]:
        """Targets for "liver, pancreas" or ["liver", "ivc"], de-duplicated in first-seen order.

        Raises ValueError when nothing is named and UnknownTargetError listing every unknown name.
        """
        items = [spec] if isinstance(spec, str) else list(spec)
        texts: list[str] = []
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"target names are strings, got {type(item).__name__}")
            texts.extend(part.strip() for part in item.split(",") if part.strip())
        if not texts:
            raise ValueError("no targets given: name at least one target, e.g. 'liver'")
        resolved: list[Target] = []
        unknown: list[str] = []
        for text in texts:
            target = self._by_key.get(normalise_name(text))
            if target is None:
                if text not in unknown:
                    unknown.append(text)
            elif target not in resolved:
                resolved.append(target)
        if unknown:
            raise UnknownTargetError(unknown, {u: self._suggest(u) for u in unknown}, self.names())
        return tuple(resolved)

    def dataset(self, name: str) -> DatasetLabelMap:
        """A dataset label map by name or alias, case-insensitive ("Task03_Liver", "KiTS")."""
        found = self._dataset_by_key.get(_dataset_key(name)) if isinstance(name, str) else None
        if found is None:
            valid = tuple(d.name for d in self.datasets)
            close = difflib.get_close_matches(_dataset_key(str(name)), list(self._dataset_by_key), n=3, cutoff=0.6)
            suggestions = list(dict.fromkeys(self._dataset_by_key[c].name for c in close))
            raise UnknownDatasetError(str(name), valid, suggestions)
        return found

    def _suggest(self, text: str) -> list[str]:
        close = difflib.get_close_matches(normalise_name(text), list(self._by_key), n=5, cutoff=0.6)
        return list(dict.fromkeys(self._by_key[c].name for c in close))[:3]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; ``Vocabulary.from_dict(v.to_dict()) == v``."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "targets": [t.to_dict() for t in self.targets],
            "datasets": [d.to_dict() for d in self.datasets],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Vocabulary:
        if d.get("format") != FORMAT or d.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"not a {FORMAT} v{FORMAT_VERSION} document (format={d.get('format')!r}, version={d.get('version')!r})"
            )
        return cls(
            targets=tuple(Target.from_dict(t) for t in d["targets"]),
            datasets=tuple(DatasetLabelMap.from_dict(x) for x in d["datasets"]),
        )

    def sha256(self) -> str:
        """Hex digest of the canonical JSON (sorted keys, compact) of :meth:`to_dict`."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------------------------
# The default vocabulary, built from the rows in model.targets.tables.
# --------------------------------------------------------------------------------------------


def _target_from_row(row: tuple[Any, ...]) -> Target:
    """A :data:`model.targets.tables.TARGETS` row (Target's fields in order, codes as tuples) as a Target."""
    target_id, name, display, kind, synonyms, code, category, *placement = row
    return Target(target_id, name, display, TargetKind(kind), synonyms, None if code is None else Code(*code),
                  Code(*category), *placement, connected=name in tables.ONE_PIECE)


_DEFAULT_TARGETS: tuple[Target, ...] = tuple(_target_from_row(row) for row in tables.TARGETS)
_DEFAULT_DATASETS: tuple[DatasetLabelMap, ...] = tuple(DatasetLabelMap(*row) for row in tables.DATASETS)


def default_vocabulary() -> Vocabulary:
    """The vocabulary latentseg models are trained with (32 targets, 13 dataset label maps)."""
    return Vocabulary(targets=_DEFAULT_TARGETS, datasets=_DEFAULT_DATASETS)


# --------------------------------------------------------------------------------------------
# Typical adult volumes (rows in model.targets.tables), for the review flag's "implausibly small"
# check (model.inference.statistics). Not part of a Target: the vocabulary's hash, which every
# bundle records, stays the same.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizePrior:
    """Typical adult volume of one structure in ml, and where the range comes from."""

    low_ml: float
    high_ml: float
    source: str

    def __post_init__(self) -> None:
        if not 0 < self.low_ml < self.high_ml:
            raise ValueError(f"size prior needs 0 < low_ml < high_ml, got {self.low_ml}, {self.high_ml}")


_SIZE_PRIORS: Mapping[str, SizePrior] = MappingProxyType(
    {name: SizePrior(*row) for name, row in tables.SIZE_PRIORS.items()}
)


def size_prior(name: str) -> SizePrior | None:
    """Typical adult volume of target ``name`` (None for lesions and structures without a range)."""
    return _SIZE_PRIORS.get(name)


_USUAL_SIDES: Mapping[str, str] = MappingProxyType(
    {**tables.USUAL_SIDES, **{t.name: t.side for t in _DEFAULT_TARGETS if t.side is not None}}
)


def usual_side(name: str) -> str | None:
    """The patient's side ("left"/"right") target ``name`` lies on in a normal adult; None for midline or
    both-sided structures. Paired targets give their own side, unpaired organs ``tables.USUAL_SIDES``."""
    return _USUAL_SIDES.get(name)
