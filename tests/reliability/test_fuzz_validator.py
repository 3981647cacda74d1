"""The upload validator's fuzz harness (fuzz/upload_validator.py), run briefly: derandomised and bounded."""

from __future__ import annotations

import os
from pathlib import Path

from fuzz.upload_validator import SEEDS, check_one, run
from service.uploads.nifti import VolumeInfo

EXAMPLES = int(os.environ.get("LATENTSEG_FUZZ_EXAMPLES", "300"))


def test_seeds_are_accepted_and_cleaned(tmp_path: Path) -> None:
    for seed in SEEDS:  # the harness starts from valid inputs: otherwise it only tests refusals
        assert isinstance(check_one(seed, tmp_path), VolumeInfo)


def test_validator_fuzz_property(tmp_path: Path) -> None:
    run(EXAMPLES, tmp_path)
