"""Tests for model.targets.vocabulary: the target registry and the dataset mapping table."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import subprocess
import sys

import pytest

from model.targets.vocabulary import (
    ANATOMICAL_STRUCTURE,
    MORPHOLOGICALLY_ALTERED_STRUCTURE,
    DatasetLabelMap,
    Target,
    TargetKind,
    UnknownDatasetError,
    UnknownTargetError,
    Vocabulary,
    default_vocabulary,
    normalise_name,
)

EXPECTED_NAMES = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
    "adrenal_gland_left", "duodenum", "hepatic_vessel", "lung_right", "lung_left", "colon", "intestine",
    "rectum", "urinary_bladder", "prostate", "femur_head_left", "femur_head_right", "celiac_trunk",
    "kidney_tumor", "liver_tumor", "pancreas_tumor", "hepatic_vessel_tumor", "lung_tumor", "colon_tumor",
    "kidney_cyst",
)


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return default_vocabulary()


# ---- targets ---------------------------------------------------------------------------------


def test_ids_are_stable_contiguous_and_in_the_published_order(vocab: Vocabulary) -> None:
    assert vocab.names() == EXPECTED_NAMES
    assert [t.id for t in vocab] == list(range(1, len(EXPECTED_NAMES) + 1))
    assert len(vocab) == 32 and vocab.max_id == 32
    for index, name in enumerate(EXPECTED_NAMES, start=1):
        assert vocab.by_id(index).name == name
    with pytest.raises(KeyError):
        vocab.by_id(0)
    with pytest.raises(KeyError):
        vocab.by_id(33)


def test_names_are_snake_case(vocab: Vocabulary) -> None:
    for name in vocab.names():
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name), name


def test_synonyms_are_unique_and_never_another_targets_name(vocab: Vocabulary) -> None:
    owner_of_key: dict[str, str] = {normalise_name(t.name): t.name for t in vocab}
    for target in vocab:
        for text in (target.display, *target.synonyms):
            key = normalise_name(text)
            owner = owner_of_key.setdefault(key, target.name)
            assert owner == target.name, f"{text!r} of {target.name} collides with {owner}"
            assert vocab.get(text) is target


def test_lateral_structures_have_a_side_and_lesions_lie_within_organs(vocab: Vocabulary) -> None:
    sides = {t.name: t.side for t in vocab}
    for name, side in sides.items():
        if name.endswith("_left"):
            assert side == "left", name
        elif name.endswith("_right"):
            assert side == "right", name
        else:
            assert side is None, name
    assert vocab.get("liver_tumor").within == ("liver",)
    assert vocab.get("kidney_tumor").within == ("kidney_left", "kidney_right")
    assert vocab.get("kidney_cyst").within == ("kidney_left", "kidney_right")
    assert vocab.get("pancreas_tumor").within == ("pancreas",)
    assert vocab.get("hepatic_vessel_tumor").within == ("liver",)
    assert vocab.get("colon_tumor").within == ("colon",)
    assert vocab.get("lung_tumor").within == ("lung_left", "lung_right")
    for target in vocab:
        if target.kind is TargetKind.ORGAN:
            assert target.category == ANATOMICAL_STRUCTURE and not target.within, target.name
        else:
            assert target.category == MORPHOLOGICALLY_ALTERED_STRUCTURE and target.within, target.name
            assert target.code is not None, target.name


def test_codes(vocab: Vocabulary) -> None:
    assert vocab.get("liver").code is not None and vocab.get("liver").code.value == "10200004"
    assert vocab.get("kidney_left").code.value == "64033007"
    assert vocab.get("kidney_left").laterality.value == "7771000"
    assert vocab.get("kidney_right").laterality.value == "24028007"
    assert vocab.get("liver").laterality is None
    assert vocab.get("kidney_cyst").code.value == "367643001"
    assert vocab.get("liver_tumor").code.value == "108369006"
    for target in vocab:
        if target.code is not None:
            assert target.code.scheme == "SCT" and target.code.value.isdigit(), target.name


# ---- lookup ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("IVC", "inferior_vena_cava"),
        ("postcava", "inferior_vena_cava"),
        ("Vena Cava Inferior", "inferior_vena_cava"),
        ("Left Kidney", "kidney_left"),
        ("kidney-left", "kidney_left"),
        ("  KIDNEY_RIGHT ", "kidney_right"),
        ("pancreatic tumour", "pancreas_tumor"),
        ("Pancreas Tumor", "pancreas_tumor"),
        ("liver_tumour", "liver_tumor"),
        ("hepatic tumour", "liver_tumor"),
        ("gall-bladder", "gallbladder"),
        ("oesophagus", "esophagus"),
        ("small bowel", "intestine"),
        ("Small intestine", "intestine"),
        ("bladder", "urinary_bladder"),
        ("coeliac trunk", "celiac_trunk"),
        ("head of femur (L)", "femur_head_left"),
    ],
)
def test_get_resolves_names_synonyms_and_spellings(vocab: Vocabulary, text: str, name: str) -> None:
    assert vocab.get(text).name == name


def test_resolve_parses_deduplicates_and_keeps_order(vocab: Vocabulary) -> None:
    names = [t.name for t in vocab.resolve("liver, pancreas ,IVC,liver, inferior vena cava")]
    assert names == ["liver", "pancreas", "inferior_vena_cava"]
    assert [t.name for t in vocab.resolve(["Left Kidney", "kidney_left", "ivc"])] == [
        "kidney_left",
        "inferior_vena_cava",
    ]
    assert [t.name for t in vocab.resolve(("spleen",))] == ["spleen"]


@pytest.mark.parametrize("spec", ["", " , ,", [], ["", " "]])
def test_resolve_rejects_empty(vocab: Vocabulary, spec: str | list[str]) -> None:
    with pytest.raises(ValueError, match="no targets"):
        vocab.resolve(spec)


def test_unknown_targets_are_all_reported_with_suggestions(vocab: Vocabulary) -> None:
    with pytest.raises(UnknownTargetError) as caught:
        vocab.resolve("livr, spleen, pancreaas, qwertyuiop")
    error = caught.value
    assert error.unknown == ("livr", "pancreaas", "qwertyuiop")
    assert error.suggestions["livr"][0] == "liver"
    assert error.suggestions["pancreaas"][0] == "pancreas"
    assert error.suggestions["qwertyuiop"] == []
    assert error.valid == EXPECTED_NAMES
    message = str(error)
    for text in ("livr", "pancreaas", "qwertyuiop", "did you mean: liver", "kidney_cyst"):
        assert text in message
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.unknown == error.unknown and str(copy) == message


def test_get_raises_unknown_target_error(vocab: Vocabulary) -> None:
    with pytest.raises(UnknownTargetError, match="spleen") as caught:
        vocab.get("splen")
    assert caught.value.unknown == ("splen",)
    assert "spleen" in caught.value.suggestions["splen"]


# ---- dataset label maps ------------------------------------------------------------------------


def test_every_dataset_refers_only_to_existing_targets(vocab: Vocabulary) -> None:
    names = set(vocab.names())
    assert len(vocab.datasets) >= 13
    for dataset in vocab.datasets:
        assert dataset.annotated <= names, dataset.name
        values = [v for v, _ in dataset.labels] + [v for v, _, _ in dataset.lateral_splits]
        assert len(values) == len(set(values)), dataset.name
        for _, left, right in dataset.lateral_splits:
            assert (vocab.get(left).side, vocab.get(right).side) == ("left", "right")


def test_annotated_sets(vocab: Vocabulary) -> None:
    assert vocab.dataset("msd_task03_liver").annotated == {"liver", "liver_tumor"}
    assert vocab.dataset("msd_task09_spleen").annotated == {"spleen"}
    assert vocab.dataset("msd_task06_lung").annotated == {"lung_tumor"}
    assert vocab.dataset("abdomenct1k").annotated == {"liver", "kidney_left", "kidney_right", "spleen", "pancreas"}
    btcv = vocab.dataset("btcv")
    assert len(btcv.labels) == 13 and btcv.annotated == set(EXPECTED_NAMES[:13])
    assert len(vocab.dataset("amos22").labels) == 15
    word = vocab.dataset("word")
    assert len(word.labels) + len(word.lateral_splits) == 16
    assert {"adrenal_gland_left", "adrenal_gland_right", "femur_head_left", "rectum"} <= word.annotated
    total = vocab.dataset("totalsegmentator_v2")
    assert {v for v, t in total.labels if t == "lung_right"} == {12, 13, 14}
    assert {v for v, t in total.labels if t == "kidney_cyst"} == {23, 24}
    assert "liver_tumor" not in total.annotated and "rectum" not in total.annotated
    assert vocab.dataset("latentseg_phantoms").annotated == {
        "liver", "spleen", "kidney_right", "kidney_left", "pancreas", "stomach", "gallbladder", "aorta",
        "inferior_vena_cava", "liver_tumor", "pancreas_tumor", "kidney_tumor",
    }


def test_kits_splits_kidney_by_side(vocab: Vocabulary) -> None:
    kits = vocab.dataset("kits23")
    assert kits.lateral_splits == ((1, "kidney_left", "kidney_right"),)
    assert dict(kits.labels) == {2: "kidney_tumor", 3: "kidney_cyst"}
    assert kits.annotated == {"kidney_left", "kidney_right", "kidney_tumor", "kidney_cyst"}


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("Task03_Liver", "msd_task03_liver"),
        ("msd liver", "msd_task03_liver"),
        ("KiTS", "kits23"),
        ("kits21", "kits23"),
        ("AbdomenCT-1K", "abdomenct1k"),
        ("BTCV", "btcv"),
        ("TotalSegmentator", "totalsegmentator_v2"),
        ("Task08_HepaticVessel", "msd_task08_hepatic_vessel"),
    ],
)
def test_dataset_by_alias(vocab: Vocabulary, alias: str, name: str) -> None:
    assert vocab.dataset(alias).name == name


def test_unknown_dataset_lists_valid_ones(vocab: Vocabulary) -> None:
    with pytest.raises(UnknownDatasetError) as caught:
        vocab.dataset("kits19")
    assert "kits23" in str(caught.value) and "btcv" in str(caught.value)
    assert caught.value.valid == tuple(d.name for d in vocab.datasets)
    assert isinstance(caught.value, ValueError)


# ---- validation of hand-built vocabularies -------------------------------------------------------


def _organ(target_id: int, name: str, synonyms: tuple[str, ...] = (), side: str | None = None) -> Target:
    return Target(target_id, name, name.replace("_", " ").title(), TargetKind.ORGAN, synonyms, None,
                  ANATOMICAL_STRUCTURE, side)


def test_vocabulary_rejects_inconsistent_data() -> None:
    liver = _organ(1, "liver")
    with pytest.raises(ValueError, match="id 1"):
        Vocabulary((liver, _organ(1, "spleen")))
    with pytest.raises(ValueError, match="collides"):
        Vocabulary((liver, _organ(2, "spleen", synonyms=("Liver",))))
    with pytest.raises(ValueError, match="unknown targets"):
        Vocabulary((liver,), (DatasetLabelMap("x", ((1, "liver"), (2, "spleen"))),))
    with pytest.raises(ValueError, match="more than once"):
        DatasetLabelMap("x", ((1, "liver"), (1, "spleen")))
    with pytest.raises(ValueError, match="snake_case"):
        _organ(2, "Left Kidney")
    with pytest.raises(ValueError, match="left then a right"):
        Vocabulary(
            (_organ(1, "kidney_left", side="left"), _organ(2, "kidney_right", side="right")),
            (DatasetLabelMap("x", (), lateral_splits=((1, "kidney_right", "kidney_left"),)),),
        )


# ---- serialisation -----------------------------------------------------------------------------


def test_round_trip_through_json_is_exact(vocab: Vocabulary) -> None:
    document = json.loads(json.dumps(vocab.to_dict()))
    again = Vocabulary.from_dict(document)
    assert again == vocab
    assert again.targets == vocab.targets and again.datasets == vocab.datasets
    assert again.sha256() == vocab.sha256()
    assert again.to_dict() == vocab.to_dict()
    assert again.get("IVC").name == "inferior_vena_cava"


def test_sha256_is_hex_and_tracks_content(vocab: Vocabulary) -> None:
    digest = vocab.sha256()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert default_vocabulary().sha256() == digest
    ivc = vocab.get("inferior_vena_cava")
    changed_target = dataclasses.replace(ivc, synonyms=(*ivc.synonyms, "caval vein"))
    changed = Vocabulary(
        tuple(changed_target if t is ivc else t for t in vocab.targets), vocab.datasets
    )
    assert changed.sha256() != digest
    fewer_datasets = Vocabulary(vocab.targets, vocab.datasets[:-1])
    assert fewer_datasets.sha256() != digest


def test_from_dict_rejects_other_documents(vocab: Vocabulary) -> None:
    document = vocab.to_dict()
    document["version"] = 999
    with pytest.raises(ValueError, match="version"):
        Vocabulary.from_dict(document)


def test_import_does_not_pull_in_torch() -> None:
    code = (
        "import sys; import model.targets.vocabulary as v; v.default_vocabulary().sha256(); "
        "heavy = [m for m in ('torch', 'monai') if m in sys.modules]; "
        "print(','.join(heavy)); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"heavy modules imported: {result.stdout} {result.stderr}"


def test_connected_marks_one_piece_organs_never_lesions_and_keeps_old_hashes() -> None:
    import dataclasses

    from model.targets import tables

    v = default_vocabulary()
    connected = {t.name for t in v if t.connected}
    assert connected == set(tables.ONE_PIECE)  # every listed name is a real target
    assert not any(t.is_lesion for t in v if t.connected)
    with pytest.raises(ValueError, match="lesion"):
        dataclasses.replace(v.get("liver_tumor"), connected=True)
    # A target saved before the field existed (no "connected" key) reads back unchanged, same dict.
    old = v.get("colon").to_dict()
    assert "connected" not in old and Target.from_dict(old) == v.get("colon")
    assert Target.from_dict(v.get("liver").to_dict()).connected
