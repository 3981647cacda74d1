"""training.synthetic.labelmap_phantoms via `latentseg phantoms --from-labels`: real anatomy, new colours, exact labels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cli.main import main as latentseg
from model.targets.vocabulary import default_vocabulary
from tests.training.conftest import write_nnunet_v2
from training.data import read_dataset
from training.synthetic.labelmap_phantoms import synthesise
from training.synthetic.phantoms import PHANTOM_LABELS

PHANTOM = dict((name, value) for value, name in PHANTOM_LABELS)
TS_LABELS = {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "aorta": 52,
             "vertebrae_L1": 31}


@pytest.fixture(scope="module")
def ts_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.training.conftest import write_small_phantoms

    source = write_small_phantoms(tmp_path_factory.mktemp("lm") / "src", cases=2, seed=11)
    mapping = {PHANTOM["spleen"]: 1, PHANTOM["kidney_right"]: 2, PHANTOM["kidney_left"]: 3, PHANTOM["liver"]: 5,
               PHANTOM["aorta"]: 52}
    return write_nnunet_v2(source, tmp_path_factory.mktemp("lm") / "ts_like", TS_LABELS, mapping, name="ts_like")


def test_synthesise_keeps_anatomy_and_changes_appearance(ts_like: Path) -> None:
    image = np.asarray(nib.load(str(ts_like / "imagesTr" / "case_000_0000.nii.gz")).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(ts_like / "labelsTr" / "case_000.nii.gz")).dataobj).astype(np.int32)
    a_img, a_lab = synthesise(image, label, seed=3)
    b_img, b_lab = synthesise(image, label, seed=3)
    c_img, _ = synthesise(image, label, seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)  # one seed, one case
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == image.shape and a_img.dtype == np.int16 and a_lab.dtype == np.uint8
    assert set(np.unique(a_lab)) <= set(np.unique(label))  # nearest neighbour: no new label values
    for value in (1, 5):  # the warp moves and reshapes organs but keeps them about their size
        assert 0.6 < (a_lab == value).sum() / (label == value).sum() < 1.6
    assert not np.allclose(a_img, image)


def test_cli_writes_a_dataset_the_trainer_maps_like_its_source(ts_like: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    assert latentseg(["phantoms", "--from-labels", str(ts_like), "--cases", "2", "--seed", "1", "--out", str(out),
                      "--exclude-case", "case_001"]) == 0
    names = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert names == ["synth_case_000_1_000.nii.gz", "synth_case_000_1_001.nii.gz"]  # never from the excluded case
    assert json.loads((out / "dataset.json").read_text())["labels"] == TS_LABELS
    vocabulary = default_vocabulary()
    assert read_dataset(out, vocabulary).label_map == read_dataset(ts_like, vocabulary).label_map
    assert latentseg(["phantoms", "--from-labels", str(ts_like), "--cases", "1", "--out", str(tmp_path / "x"),
                      "--exclude-case", "nobody"]) == 2
