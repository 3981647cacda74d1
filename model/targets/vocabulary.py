"""The segmentation vocabulary: the single source of truth for what latentseg can segment.

Pure data and stdlib only (no torch, no numpy), so the API process, the CLI, training and
model bundles all import the same definitions and can never drift apart.

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
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from model.errors import UserError

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


ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")
NEOPLASM = Code("108369006", "SCT", "Neoplasm")
CYST = Code("367643001", "SCT", "Cyst")
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
# The default vocabulary. Ids are stable: append new targets with new ids, never renumber.
# --------------------------------------------------------------------------------------------

_ORG = ANATOMICAL_STRUCTURE
_ALT = MORPHOLOGICALLY_ALTERED_STRUCTURE
_KIDNEY = Code("64033007", "SCT", "Kidney")
_ADRENAL = Code("23451007", "SCT", "Adrenal gland")
_LUNG = Code("39607008", "SCT", "Lung")
_KIDNEYS = ("kidney_left", "kidney_right")
_LUNGS = ("lung_left", "lung_right")

_O, _T, _C = TargetKind.ORGAN, TargetKind.TUMOUR, TargetKind.CYST

_BASE_TARGETS: tuple[Target, ...] = (
    Target(1, "spleen", "Spleen", _O, ("lien",), Code("78961009", "SCT", "Spleen"), _ORG),
    Target(2, "kidney_right", "Right kidney", _O,
           ("right kidney", "kidney right", "kidney r", "r kidney", "rt kidney"), _KIDNEY, _ORG, "right"),
    Target(3, "kidney_left", "Left kidney", _O,
           ("left kidney", "kidney left", "kidney l", "l kidney", "lt kidney"), _KIDNEY, _ORG, "left"),
    Target(4, "gallbladder", "Gallbladder", _O, ("gall bladder", "cholecyst"),
           Code("28231008", "SCT", "Gallbladder"), _ORG),
    Target(5, "esophagus", "Esophagus", _O, ("oesophagus", "gullet"), Code("32849002", "SCT", "Esophagus"), _ORG),
    Target(6, "liver", "Liver", _O, ("hepar",), Code("10200004", "SCT", "Liver"), _ORG),
    Target(7, "stomach", "Stomach", _O, ("gaster",), Code("69695003", "SCT", "Stomach"), _ORG),
    Target(8, "aorta", "Aorta", _O, (), Code("15825003", "SCT", "Aorta"), _ORG),
    Target(9, "inferior_vena_cava", "Inferior vena cava", _O, ("postcava", "ivc", "vena cava inferior"),
           Code("64131007", "SCT", "Inferior vena cava"), _ORG),
    Target(10, "portal_vein_and_splenic_vein", "Portal vein and splenic vein", _O,
           ("portal vein", "splenic vein", "portal and splenic veins", "portal splenic vein"),
           Code("110765007", "SCT", "Portal vein and splenic vein"), _ORG),
    Target(11, "pancreas", "Pancreas", _O, (), Code("15776009", "SCT", "Pancreas"), _ORG),
    Target(12, "adrenal_gland_right", "Right adrenal gland", _O,
           ("right adrenal gland", "right adrenal", "adrenal right", "right suprarenal gland"),
           _ADRENAL, _ORG, "right"),
    Target(13, "adrenal_gland_left", "Left adrenal gland", _O,
           ("left adrenal gland", "left adrenal", "adrenal left", "left suprarenal gland"),
           _ADRENAL, _ORG, "left"),
    Target(14, "duodenum", "Duodenum", _O, (), Code("38848004", "SCT", "Duodenum"), _ORG),
    Target(15, "hepatic_vessel", "Hepatic vessels", _O,
           ("hepatic vessels", "liver vessel", "liver vessels", "hepatic vasculature"), None, _ORG),
    Target(16, "lung_right", "Right lung", _O, ("right lung", "lung right", "r lung"), _LUNG, _ORG, "right"),
    Target(17, "lung_left", "Left lung", _O, ("left lung", "lung left", "l lung"), _LUNG, _ORG, "left"),
    Target(18, "colon", "Colon", _O, ("large bowel", "large intestine"), Code("71854001", "SCT", "Colon"), _ORG),
    Target(19, "intestine", "Small intestine", _O, ("small bowel", "small intestine"),
           Code("30315005", "SCT", "Small intestine"), _ORG),
    Target(20, "rectum", "Rectum", _O, (), Code("34402009", "SCT", "Rectum"), _ORG),
    Target(21, "urinary_bladder", "Urinary bladder", _O, ("bladder",),
           Code("89837001", "SCT", "Urinary bladder"), _ORG),
    Target(22, "prostate", "Prostate", _O, ("prostate gland",), Code("41216001", "SCT", "Prostate"), _ORG),
    Target(23, "femur_head_left", "Left femoral head", _O,
           ("left femoral head", "femoral head left", "left femur head", "head of femur left", "head of femur l",
            "head of left femur"), None, _ORG, "left"),
    Target(24, "femur_head_right", "Right femoral head", _O,
           ("right femoral head", "femoral head right", "right femur head", "head of femur right",
            "head of femur r", "head of right femur"), None, _ORG, "right"),
    Target(25, "celiac_trunk", "Celiac trunk", _O,
           ("coeliac trunk", "celiac artery", "coeliac artery", "celiac axis", "coeliac axis"),
           Code("57850000", "SCT", "Celiac artery"), _ORG),
    Target(26, "kidney_tumor", "Kidney tumour", _T,
           ("kidney tumour", "renal tumor", "renal tumour", "kidney neoplasm", "renal neoplasm"),
           NEOPLASM, _ALT, None, _KIDNEYS),
    Target(27, "liver_tumor", "Liver tumour", _T,
           ("liver tumour", "hepatic tumor", "hepatic tumour", "liver neoplasm", "hepatic neoplasm"),
           NEOPLASM, _ALT, None, ("liver",)),
    Target(28, "pancreas_tumor", "Pancreas tumour", _T,
           ("pancreas tumour", "pancreatic tumor", "pancreatic tumour", "pancreatic neoplasm"),
           NEOPLASM, _ALT, None, ("pancreas",)),
    Target(29, "hepatic_vessel_tumor", "Hepatic vessel tumour", _T,
           ("hepatic vessel tumour", "liver vessel tumor", "liver vessel tumour"),
           NEOPLASM, _ALT, None, ("liver",)),
    Target(30, "lung_tumor", "Lung tumour", _T,
           ("lung tumour", "pulmonary tumor", "pulmonary tumour", "lung neoplasm", "pulmonary neoplasm"),
           NEOPLASM, _ALT, None, _LUNGS),
    Target(31, "colon_tumor", "Colon tumour", _T,
           ("colon tumour", "colonic tumor", "colonic tumour", "colon neoplasm", "colonic neoplasm"),
           NEOPLASM, _ALT, None, ("colon",)),
    Target(32, "kidney_cyst", "Kidney cyst", _C, ("renal cyst", "kidney cysts", "renal cysts"),
           CYST, _ALT, None, _KIDNEYS),
)

# Structures that are one connected piece (see Target.connected).
_ONE_PIECE = frozenset({
    "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior_vena_cava", "pancreas", "adrenal_gland_right", "adrenal_gland_left", "duodenum", "lung_right",
    "lung_left", "rectum", "urinary_bladder", "prostate", "femur_head_left", "femur_head_right",
})
_DEFAULT_TARGETS: tuple[Target, ...] = tuple(
    replace(t, connected=True) if t.name in _ONE_PIECE else t for t in _BASE_TARGETS
)

_DEFAULT_DATASETS: tuple[DatasetLabelMap, ...] = (
    DatasetLabelMap(
        "msd_task03_liver", ((1, "liver"), (2, "liver_tumor")),
        aliases=("Task03_Liver", "MSD Liver", "msd_liver", "LiTS"),
    ),
    DatasetLabelMap("msd_task06_lung", ((1, "lung_tumor"),), aliases=("Task06_Lung", "MSD Lung", "msd_lung")),
    DatasetLabelMap(
        "msd_task07_pancreas", ((1, "pancreas"), (2, "pancreas_tumor")),
        aliases=("Task07_Pancreas", "MSD Pancreas", "msd_pancreas"),
    ),
    DatasetLabelMap(
        "msd_task08_hepatic_vessel", ((1, "hepatic_vessel"), (2, "hepatic_vessel_tumor")),
        aliases=("Task08_HepaticVessel", "MSD HepaticVessel", "MSD Hepatic Vessel", "msd_task08_hepaticvessel"),
    ),
    DatasetLabelMap("msd_task09_spleen", ((1, "spleen"),), aliases=("Task09_Spleen", "MSD Spleen", "msd_spleen")),
    DatasetLabelMap("msd_task10_colon", ((1, "colon_tumor"),), aliases=("Task10_Colon", "MSD Colon", "msd_colon")),
    DatasetLabelMap(
        "btcv",
        (
            (1, "spleen"), (2, "kidney_right"), (3, "kidney_left"), (4, "gallbladder"), (5, "esophagus"),
            (6, "liver"), (7, "stomach"), (8, "aorta"), (9, "inferior_vena_cava"),
            (10, "portal_vein_and_splenic_vein"), (11, "pancreas"), (12, "adrenal_gland_right"),
            (13, "adrenal_gland_left"),
        ),
        aliases=("BTCV Abdomen", "BCV", "Synapse", "Beyond the Cranial Vault"),
    ),
    DatasetLabelMap(
        "kits23", ((2, "kidney_tumor"), (3, "kidney_cyst")),
        lateral_splits=((1, "kidney_left", "kidney_right"),),
        aliases=("KiTS", "KiTS 2023", "KiTS21"),
    ),
    DatasetLabelMap(
        "amos22",
        (
            (1, "spleen"), (2, "kidney_right"), (3, "kidney_left"), (4, "gallbladder"), (5, "esophagus"),
            (6, "liver"), (7, "stomach"), (8, "aorta"), (9, "inferior_vena_cava"), (10, "pancreas"),
            (11, "adrenal_gland_right"), (12, "adrenal_gland_left"), (13, "duodenum"), (14, "urinary_bladder"),
            (15, "prostate"),
        ),
        aliases=("AMOS", "AMOS 2022"),
    ),
    DatasetLabelMap(
        "word",
        (
            (1, "liver"), (2, "spleen"), (3, "kidney_left"), (4, "kidney_right"), (5, "stomach"),
            (6, "gallbladder"), (7, "esophagus"), (8, "pancreas"), (9, "duodenum"), (10, "colon"),
            (11, "intestine"), (13, "rectum"), (14, "urinary_bladder"), (15, "femur_head_left"),
            (16, "femur_head_right"),
        ),
        lateral_splits=((12, "adrenal_gland_left", "adrenal_gland_right"),),
        aliases=("WORD dataset", "Whole abdominal organ dataset"),
    ),
    DatasetLabelMap(
        "abdomenct1k", ((1, "liver"), (3, "spleen"), (4, "pancreas")),
        lateral_splits=((2, "kidney_left", "kidney_right"),),
        aliases=("AbdomenCT-1K", "AbdomenCT 1K"),
    ),
    DatasetLabelMap(
        "totalsegmentator_v2",
        (
            (1, "spleen"), (2, "kidney_right"), (3, "kidney_left"), (4, "gallbladder"), (5, "liver"),
            (6, "stomach"), (7, "pancreas"), (8, "adrenal_gland_right"), (9, "adrenal_gland_left"),
            (10, "lung_left"), (11, "lung_left"),  # upper / lower lobe left
            (12, "lung_right"), (13, "lung_right"), (14, "lung_right"),  # upper / middle / lower lobe right
            (15, "esophagus"), (18, "intestine"), (19, "duodenum"), (20, "colon"), (21, "urinary_bladder"),
            (22, "prostate"), (23, "kidney_cyst"), (24, "kidney_cyst"),  # kidney_cyst_left / _right
            (52, "aorta"), (63, "inferior_vena_cava"), (64, "portal_vein_and_splenic_vein"),
        ),
        aliases=("TotalSegmentator", "TotalSegmentator v2", "totalseg", "totalsegmentator_total"),
    ),
    DatasetLabelMap(
        "latentseg_phantoms",
        (
            (1, "liver"), (2, "spleen"), (3, "kidney_right"), (4, "kidney_left"), (5, "pancreas"), (6, "stomach"),
            (7, "gallbladder"), (8, "aorta"), (9, "inferior_vena_cava"), (10, "liver_tumor"),
            (11, "pancreas_tumor"), (12, "kidney_tumor"),
        ),
        aliases=("phantoms", "phantom"),
    ),
)


def default_vocabulary() -> Vocabulary:
    """The vocabulary latentseg models are trained with (32 targets, 13 dataset label maps)."""
    return Vocabulary(targets=_DEFAULT_TARGETS, datasets=_DEFAULT_DATASETS)


# --------------------------------------------------------------------------------------------
# Typical adult volumes (rough literature ranges), for the review flag's "implausibly small"
# check (model.inference.statistics). Not part of a Target: the vocabulary's hash, which every bundle
# records, stays the same. A mask below ``low_ml`` that does not touch the volume's edge is
# flagged; organs whose size depends on filling or on how much of them the field of view holds
# get a low bound well under the usual size.
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


_SIZE_PRIORS: Mapping[str, SizePrior] = MappingProxyType({
    "liver": SizePrior(1000, 2500, "CT volumetry of adult livers, about 1.0-2.5 l (Heinemann 1999; Urata 1995)"),
    "spleen": SizePrior(80, 500, "CT splenic volume, adults about 100-400 ml; > 500 ml splenomegaly (Prassopoulos 1997)"),
    "kidney_right": SizePrior(80, 300, "CT kidney volume, adults about 80-300 ml each (Bakker 1999; Cheong 2007)"),
    "kidney_left": SizePrior(80, 300, "CT kidney volume, adults about 80-300 ml each (Bakker 1999; Cheong 2007)"),
    "gallbladder": SizePrior(5, 150, "fasting gallbladder 20-50 ml, far less after a meal (Everson 1980)"),
    "pancreas": SizePrior(30, 150, "CT pancreas volume, adults about 50-100 ml, less with age (Saisho 2007)"),
    "stomach": SizePrior(50, 2000, "depends on filling: about 50 ml empty to 1-2 l distended"),
    "aorta": SizePrior(20, 400, "abdominal aorta alone about 20-60 ml; the whole thoracoabdominal aorta up to ~400 ml"),
    "inferior_vena_cava": SizePrior(10, 150, "infrarenal to intrahepatic IVC, about 15-100 ml"),
    "esophagus": SizePrior(5, 60, "about 20-40 ml over its length"),
    "duodenum": SizePrior(20, 250, "about 50-150 ml, filling-dependent"),
    "adrenal_gland_right": SizePrior(1.5, 15, "CT adrenal volume about 3-8 ml each"),
    "adrenal_gland_left": SizePrior(1.5, 15, "CT adrenal volume about 3-8 ml each"),
    "lung_right": SizePrior(800, 4500, "CT lung volume, about 1.5-3.5 l each at inspiration"),
    "lung_left": SizePrior(700, 4000, "CT lung volume, about 1.3-3 l each at inspiration"),
    "urinary_bladder": SizePrior(10, 800, "depends on filling: tens of ml to about 500 ml"),
    "prostate": SizePrior(10, 150, "about 20-30 ml, larger with benign hyperplasia"),
    "femur_head_left": SizePrior(20, 120, "femoral head about 40-70 ml"),
    "femur_head_right": SizePrior(20, 120, "femoral head about 40-70 ml"),
    "portal_vein_and_splenic_vein": SizePrior(5, 80, "about 15-40 ml"),
})


def size_prior(name: str) -> SizePrior | None:
    """Typical adult volume of target ``name`` (None for lesions and structures without a range)."""
    return _SIZE_PRIORS.get(name)
