"""load_train_config: YAML and TOML, validation, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from model.bundle.config import tiny_config
from tests.training.conftest import TINY_CONFIG
from training.config import ConfigError, DiffusionStage, TrainConfig, learning_rate, load_train_config

YAML_TEXT = """
data: [datasets/phantoms, /abs/other]
out: runs/x
cache_dir: cache
seed: 7
foreground_prob: 0.5
dataset_weights: {latentseg_phantoms: 2.0}
model:
  preprocess: {spacing: [4.0, 4.0, 4.0], patch_size: [64, 64]}
  mask_ae: {base_channels: 4}
  image_vae: {channels: [8, 16, 16, 16], norm_num_groups: 4}
  denoiser: {channels: [16, 32, 32], attention_levels: [false, false, true], num_head_channels: 16, norm_num_groups: 8}
  sampling: {steps: 4, ensemble: 3}
mask_ae: {steps: 12, batch_size: 4, lr: 0.003}
diffusion: {steps: 30, ema_decay: 0.99, timestep_sampler: uniform}
"""

TOML_TEXT = """
data = ["datasets/phantoms", "/abs/other"]
out = "runs/x"
cache_dir = "cache"
seed = 7
foreground_prob = 0.5

[dataset_weights]
latentseg_phantoms = 2.0

[model.preprocess]
spacing = [4.0, 4.0, 4.0]
patch_size = [64, 64]

[model.mask_ae]
base_channels = 4

[model.image_vae]
channels = [8, 16, 16, 16]
norm_num_groups = 4

[model.denoiser]
channels = [16, 32, 32]
attention_levels = [false, false, true]
num_head_channels = 16
norm_num_groups = 8

[model.sampling]
steps = 4
ensemble = 3

[mask_ae]
steps = 12
batch_size = 4
lr = 0.003

[diffusion]
steps = 30
ema_decay = 0.99
timestep_sampler = "uniform"
"""


def test_yaml_and_toml_load_to_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(YAML_TEXT)
    (tmp_path / "b.toml").write_text(TOML_TEXT)
    from_yaml = load_train_config(tmp_path / "a.yaml")
    from_toml = load_train_config(tmp_path / "b.toml")
    assert isinstance(from_yaml, TrainConfig)
    assert from_yaml == from_toml
    assert from_yaml.model == tiny_config()
    assert from_yaml.mask_ae.steps == 12 and from_yaml.mask_ae.weight_decay == 1e-5  # the paper's λ by default
    assert from_yaml.diffusion.timestep_sampler == "uniform" and from_yaml.diffusion.ema_decay == 0.99
    assert from_yaml.dataset_weights == {"latentseg_phantoms": 2.0}


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "a.yaml").write_text(YAML_TEXT)
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_train_config(Path("configs") / "a.yaml")
    assert config.data == (folder / "datasets" / "phantoms", Path("/abs/other"))
    assert config.out == folder / "runs" / "x"
    assert config.cache_dir == folder / "cache"


def test_single_data_folder_may_be_a_string(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("data: phantoms\n")
    assert load_train_config(tmp_path / "a.yaml").data == (tmp_path / "phantoms",)


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(YAML_TEXT)
    config = load_train_config(tmp_path / "a.yaml", {"seed": 3, "out": str(tmp_path / "elsewhere")})
    assert config.seed == 3 and config.out == tmp_path / "elsewhere"


def test_shipped_tiny_config_is_valid_apart_from_its_data(tmp_path: Path) -> None:
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    assert raw["data"] == []  # tests and smoke runs supply --data
    config = load_train_config(TINY_CONFIG, {"data": [str(tmp_path)]})
    assert config.model == tiny_config()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("data: [x]\nepochs: 3\n", "epochs"),
        ("data: [x]\nmask_ae: {stepz: 3}\n", "mask_ae.stepz"),
        ("data: [x]\nmodel: {denoiser: {chanels: [8]}}\n", "model.denoiser.chanels"),
    ],
)
def test_unknown_key_is_a_config_error_naming_it(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "a.yaml").write_text(text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as info:
        load_train_config(tmp_path / "a.yaml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("a.yaml", "data: [x\nout: y\n", "not valid YAML"),
        ("a.toml", "data = [\n", "not valid TOML"),
        ("a.yaml", "just a sentence\n", "mapping"),
        ("a.yaml", "data: []\n", "data"),
        ("a.yaml", "data: [x]\nforeground_prob: 1.5\n", "foreground_prob"),
        ("a.yaml", "data: [x]\nforeground_prob: 0.9\nnegative_prob: 0.2\n", "negative_prob"),
        ("a.yaml", "data: [x]\nmask_ae: {steps: 0}\n", "mask_ae.steps"),
        ("a.yaml", "data: [x]\nmodel: {preprocess: {patch_size: [60, 60]}}\n", "divisible"),
    ],
)
def test_invalid_config_is_a_one_line_config_error(tmp_path: Path, name: str, text: str, needle: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        load_train_config(tmp_path / name)
    assert "\n" not in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_train_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["tiny.yaml", "demo.yaml", "paper.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    from pathlib import Path

    from training.config import load_train_config

    path = Path(__file__).resolve().parents[2] / "training" / "configs" / name
    config = load_train_config(path, {"data": ["/nonexistent/dataset"]})
    assert config.model.latent_shape[1] == config.model.preprocess.patch_size[0] // 8


def test_constant_schedule_keeps_the_learning_rate() -> None:
    stage = DiffusionStage(steps=100, lr=1e-3)
    assert [learning_rate(stage, s) for s in (0, 50, 99)] == [1e-3, 1e-3, 1e-3]


def test_cosine_schedule_decays_monotonically_to_the_floor() -> None:
    stage = DiffusionStage(steps=1000, lr=1e-3, lr_schedule="cosine", lr_min_fraction=0.1, warmup_steps=100)
    rates = [learning_rate(stage, s) for s in range(0, 1200)]
    assert rates[0] == pytest.approx(1e-5) and rates[99] == pytest.approx(1e-3)  # linear warm-up
    assert all(a <= b for a, b in zip(rates[:100], rates[1:100], strict=False))
    after = rates[100:1000]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert learning_rate(stage, 550) == pytest.approx(0.55e-3)  # halfway between lr and the floor
    assert rates[1000] == pytest.approx(1e-4) and rates[-1] == pytest.approx(1e-4)  # stays at the floor after `steps`
