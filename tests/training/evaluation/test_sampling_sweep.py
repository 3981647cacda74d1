from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.evaluation.sampling_sweep import Setting, main, parse_settings


def test_settings_parse_and_bad_ones_say_why() -> None:
    assert parse_settings("ddpm:5:3, ddim:10:2") == [Setting("ddpm", 5, 3), Setting("ddim", 10, 2)]
    assert parse_settings("ddpm:5:3:lcc,ddpm:5:3:raw") == [Setting("ddpm", 5, 3, True), Setting("ddpm", 5, 3, False)]
    assert parse_settings("ddpm:5:3:excl,ddpm:5:3:lcc:overlap") == [Setting("ddpm", 5, 3, None, True),
                                                                    Setting("ddpm", 5, 3, True, False)]
    assert Setting("ddpm", 5, 3, False, True).label == "ddpm, 5 steps, ensemble 3, no post-processing, exclusive"
    for bad, says in (("euler:5:3", "ddpm or ddim"), ("ddpm:5", "sampler:steps:ensemble"), ("ddim:x:2", "integers"),
                      ("ddpm:5:3:maybe", "none of lcc, raw, excl, overlap"), ("ddpm:5:3:lcc:raw", "repeats"),
                      ("", "no settings")):
        with pytest.raises(ValueError, match=says):
            parse_settings(bad)


def test_sweep_cli_scores_every_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model.bundle.loaded import write_random_bundle
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", 1, 7, PhantomSpec(shape=(40, 40, 6), spacing=(9.0, 9.0, 12.0)))
    bundle = write_random_bundle(tmp_path / "bundle", seed=2)
    assert main(["--bundle", str(bundle), "--data", str(data), "--settings", "ddpm:2:2,ddim:2:2:lcc",
                 "--targets", "liver,spleen", "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert "| ddpm, 2 steps, ensemble 2 |" in table and "| ddim, 2 steps, ensemble 2, largest component |" in table
    saved = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [r["setting"]["sampler"] for r in saved["rows"]] == ["ddpm", "ddim"]
    for row in saved["rows"]:
        assert set(row["dice"]) == {"liver", "spleen"}
        assert all(0.0 <= d <= 1.0 for d in row["dice"].values())


def test_sweep_exclusive_setting_scores_all_targets_in_one_pass(tmp_path: Path) -> None:
    from model.bundle.loaded import write_random_bundle
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", 1, 7, PhantomSpec(shape=(40, 40, 6), spacing=(9.0, 9.0, 12.0)))
    bundle = write_random_bundle(tmp_path / "bundle", seed=2)
    assert main(["--bundle", str(bundle), "--data", str(data), "--settings", "ddpm:2:2:overlap,ddpm:2:2:excl",
                 "--targets", "liver,spleen,kidney_left", "--targets-per-pass", "3", "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())["rows"]
    assert [r["setting"]["exclusive"] for r in rows] == [False, True]
    assert all(0.0 <= d <= 1.0 for row in rows for d in row["dice"].values())
    with pytest.raises(SystemExit):
        main(["--bundle", str(bundle), "--data", str(data), "--settings", "ddpm:2:2", "--targets-per-pass", "0"])


def test_sweep_scores_only_the_named_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model.bundle.loaded import write_random_bundle
    from training.synthetic.phantoms import PhantomSpec, write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", 2, 7, PhantomSpec(shape=(40, 40, 6), spacing=(9.0, 9.0, 12.0)))
    names = sorted(p.name.removesuffix(".nii.gz") for p in (data / "labelsTr").glob("*.nii.gz"))
    bundle = write_random_bundle(tmp_path / "bundle", seed=2)
    assert main(["--bundle", str(bundle), "--data", str(data), "--settings", "ddpm:2:2", "--targets", "liver",
                 "--cases", names[1], "--out", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert saved["cases"] == [names[1]]
    assert [row["cases"] for row in saved["rows"]] == [[names[1]]]  # only that case was segmented and scored
    with pytest.raises(SystemExit) as exit_info:
        main(["--bundle", str(bundle), "--data", str(data), "--settings", "ddpm:2:2", "--cases", "no_such_case"])
    assert exit_info.value.code == 2
    assert "no case named no_such_case" in capsys.readouterr().err
