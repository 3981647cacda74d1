"""`latentseg train` as a real subprocess: `train all` on the shipped tiny config makes a bundle
that loads and that `latentseg segment` runs with; user errors are one line, exit 2."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import clean_env
from tests.training.conftest import TINY_CONFIG, write_small_phantoms

LATENTSEG = str(Path(sys.executable).with_name("latentseg"))
REPO_ROOT = Path(__file__).resolve().parents[2]


def latentseg(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LATENTSEG, *args], cwd=REPO_ROOT, env=clean_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_phantoms(tmp_path_factory.mktemp("cli") / "phantoms_cli", cases=2, seed=4)


def test_train_all_makes_a_bundle_that_segment_uses(tmp_path: Path, phantoms: Path) -> None:
    out = tmp_path / "run"
    result = latentseg("train", "all", "--config", str(TINY_CONFIG), "--data", str(phantoms), "--out", str(out),
                       "--device", "cpu", "--seed", "1")
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"bundle: {out / 'bundle'}" in result.stdout
    for stage in ("mask-ae", "image-vae", "diffusion"):
        assert (out / "checkpoints" / f"{stage}.pt").is_file()
        assert (out / "logs" / f"{stage}.csv").is_file()

    from model.bundle.loaded import load_bundle
    from model.targets.vocabulary import default_vocabulary

    bundle = load_bundle(out / "bundle", device="cpu")
    vocabulary = default_vocabulary()
    annotated = vocabulary.dataset(json.loads((phantoms / "dataset.json").read_text())["name"]).annotated
    assert set(bundle.trained_targets) == annotated
    assert bundle.manifest.provenance["seed"] == 1
    # Portable provenance: a folder outside the repository by its last two path components, no host name.
    assert bundle.manifest.provenance["data"] == ["/".join(phantoms.resolve().parts[-2:])]
    assert "host" not in bundle.manifest.provenance and not any(
        str(d).startswith("/") for d in bundle.manifest.provenance["data"]
    )

    image = sorted((phantoms / "imagesTr").iterdir())[0]
    seg_out = tmp_path / "seg"
    result = latentseg("segment", str(image), "--targets", "liver,left kidney", "--bundle", str(out / "bundle"),
                       "--out", str(seg_out), "--steps", "2", "--ensemble", "2", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr[-4000:]
    source = nib.load(str(image))
    for name in ("liver_mean", "liver_variance", "kidney_left_mean", "kidney_left_variance"):
        written = nib.load(str(seg_out / f"{name}.nii.gz"))
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
        data = np.asarray(written.dataobj)
        assert np.isfinite(data).all()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "everything", "--config", "{tmp}/ok.yaml"], "unknown stage 'everything'"),
        (["train", "mask-ae", "--config", "{tmp}/nope.yaml"], "nope.yaml: no such config file"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "ok.yaml").write_text(f"data: [{tmp_path}]\n")
    result = latentseg(*(a.format(tmp=tmp_path) for a in args), timeout_s=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("latentseg train: error:") and needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("data: [x\nout: y\n", "not valid YAML"),
        ("data: [x]\nmask_ae: {stepz: 3}\n", "mask_ae.stepz: unknown key"),
        ("just words\n", "mapping"),
        ("data: [does_not_exist]\n", "does_not_exist: not a folder"),
    ],
)
def test_config_and_data_errors_are_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    """Through cli.main.main in-process (the subprocess path is the same code; these need torch
    imported, which costs seconds per subprocess)."""
    from cli.main import main

    config = tmp_path / "config.yaml"
    config.write_text(text)
    handlers = logging.root.handlers[:]  # the command configures logging for its process
    try:
        status = main(["train", "mask-ae", "--config", str(config), "--out", str(tmp_path / "run"), "--device", "cpu"])
    finally:
        logging.root.handlers[:] = handlers
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentseg train: error:") and needle in lines[0], lines
    assert not (tmp_path / "run").exists()


def _main_train(args: list[str]) -> int:
    from cli.main import main

    handlers = logging.root.handlers[:]  # the command configures logging for its process
    try:
        return main(["train", *args])
    finally:
        logging.root.handlers[:] = handlers


def test_init_from_fine_tunes_a_bundle_and_names_a_mismatch(
    tmp_path: Path, phantoms: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from model.bundle.loaded import load_bundle, write_random_bundle
    from training.config import load_train_config

    model = load_train_config(TINY_CONFIG, {"data": [str(phantoms)]}).model
    parent = write_random_bundle(tmp_path / "parent", seed=2, config=model)
    common = ["--config", str(TINY_CONFIG), "--data", str(phantoms), "--device", "cpu"]
    with caplog.at_level("INFO", logger="training.loops"):
        assert _main_train(["all", *common, "--out", str(tmp_path / "run"), "--init-from", str(parent)]) == 0
    assert any("starting from the weights of bundle" in r.getMessage() for r in caplog.records)
    bundle = load_bundle(tmp_path / "run" / "bundle", device="cpu")
    assert bundle.manifest.provenance["init_from"]["path"] == "/".join(parent.resolve().parts[-2:])
    capsys.readouterr()

    wider = model.model_copy(update={"image_vae": model.image_vae.model_copy(update={"channels": (8, 16, 16, 32)})})
    other = write_random_bundle(tmp_path / "other", seed=2, config=wider)
    assert _main_train(["image-vae", *common, "--out", str(tmp_path / "run2"), "--init-from", str(other)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.image_vae settings (channels)" in lines[0], lines


def test_train_leaves_a_case_out_trains_only_named_targets_with_augmentation(tmp_path: Path, phantoms: Path) -> None:
    # The leave-one-patient-out fold of scripts/train_real.sh: --exclude-case, a target list and augmentation
    # (contrast-phase augmentation included: the phantoms label the kidneys and vessels it re-enhances).
    config = tmp_path / "fold.yaml"
    config.write_text(
        TINY_CONFIG.read_text() + "targets: [liver, kidney_left]\naugment: {enabled: true, contrast_phase_prob: 1.0}\n"
        "negative_prob: 0.2\nnegative_margin_mm: 30\n"
    )
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (phantoms / "labelsTr").iterdir())
    out = tmp_path / "fold"
    result = latentseg("train", "all", "--config", str(config), "--data", str(phantoms), "--out", str(out),
                       "--device", "cpu", "--exclude-case", cases[0], "--steps", "6")
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((out / "bundle" / "bundle.json").read_text())
    assert manifest["trained_targets"] == ["kidney_left", "liver"]
    assert manifest["provenance"]["exclude_cases"] == [cases[0]] and manifest["provenance"]["augment"] is True
    assert manifest["provenance"]["contrast_phase_prob"] == 1.0
    assert manifest["provenance"]["negative_prob"] == 0.2 and manifest["provenance"]["negative_margin_mm"] == 30
    assert manifest["provenance"]["stages"]["diffusion"]["steps"] == 6
    typo = latentseg("train", "diffusion", "--config", str(config), "--data", str(phantoms), "--out", str(tmp_path / "x"),
                     "--device", "cpu", "--exclude-case", "no_such_case")
    assert typo.returncode == 2 and "no case named no_such_case" in typo.stderr


def test_snapshot_writes_a_bundle_from_the_latest_diffusion_checkpoint(tmp_path: Path, phantoms: Path) -> None:
    out = tmp_path / "run"
    common = ["--config", str(TINY_CONFIG), "--data", str(phantoms), "--out", str(out), "--device", "cpu"]
    early = latentseg("train", "snapshot", *common)
    assert early.returncode == 2 and "diffusion stage has not saved a checkpoint" in early.stderr
    assert latentseg("train", "all", *common, "--steps", "4").returncode == 0
    result = latentseg("train", "snapshot", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    snap = out / "snapshot-4"
    assert f"bundle: {snap}" in result.stdout
    final = json.loads((out / "bundle" / "bundle.json").read_text())
    shot = json.loads((snap / "bundle.json").read_text())
    assert shot["weights_sha256"] == final["weights_sha256"]  # same EMA weights as the bundle the run wrote
    assert shot["latent_scale"] == final["latent_scale"]


def test_train_real_script_scores_each_fold_and_marks_the_full_bundle(tmp_path: Path, phantoms: Path) -> None:
    # scripts/train_real.sh end to end on an nnU-Net-layout folder: the fold and the full run side by side,
    # then the fold scored on the case it left out and the full bundle marked with the served targets
    # (a fold folder with labelsTr/ and no labels/ was once silently never scored).
    left_out = sorted(p.name.removesuffix(".nii.gz") for p in (phantoms / "labelsTr").iterdir())[0]
    out = tmp_path / "real"
    result = subprocess.run(
        ["bash", "scripts/train_real.sh", "--config", str(TINY_CONFIG), "--parallel", "--phantoms", "0",
         "--leave-out", left_out, "--steps", "4", "--out", str(out), str(phantoms)],
        cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((out / f"fold_{left_out}" / "left_out" / "evaluation.json").read_text())
    assert report["cases"] == [left_out]
    manifest = json.loads((out / "full" / "bundle" / "bundle.json").read_text())
    assert set(manifest["validation"]["targets"]) == set(manifest["trained_targets"])
    assert "left-out Dice" in result.stdout


def test_average_writes_a_bundle_that_segment_uses_and_refuses_bad_input(tmp_path: Path) -> None:
    from model.bundle.loaded import write_random_bundle
    from tests.training.test_weight_average import fine_tune_of

    parent = write_random_bundle(tmp_path / "parent", seed=5)
    a, b = fine_tune_of(parent, tmp_path / "a", 1), fine_tune_of(parent, tmp_path / "b", 2)
    result = latentseg("average", str(a), str(b), "--out", str(tmp_path / "ab"), "--version", "0.0.1")
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((tmp_path / "ab" / "bundle.json").read_text())
    assert manifest["version"] == "0.0.1" and len(manifest["provenance"]["averaged_from"]) == 2

    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 100, (24, 24, 4)).astype(np.float32), np.eye(4)), image)
    seg = latentseg("segment", str(image), "--targets", "liver", "--bundle", str(tmp_path / "ab"), "--steps", "2",
                    "--ensemble", "2", "--out", str(tmp_path / "seg"))
    assert seg.returncode == 0, seg.stderr[-4000:]

    refused = latentseg("average", str(a), "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "at least two" in refused.stderr
    stranger = write_random_bundle(tmp_path / "stranger", seed=9)
    refused = latentseg("average", str(a), str(stranger), "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "auto-encoders" in refused.stderr and not (tmp_path / "x").exists()
    refused = latentseg("average", str(a), str(b), "--weights", "1", "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "--weights" in refused.stderr
