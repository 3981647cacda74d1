"""Shared fixtures for the model tests: a random tiny bundle, written once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.bundle.loaded import LoadedBundle, load_bundle, write_random_bundle
from model.bundle.config import tiny_config
from model.diffusion.schedule import make_betas


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def random_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained bundle with every zero-initialised weight randomised (read-only: copy before editing)."""
    return write_random_bundle(tmp_path_factory.mktemp("bundles") / "random-tiny", seed=0)


@pytest.fixture(scope="session")
def random_bundle(random_bundle_path: Path) -> LoadedBundle:
    return load_bundle(random_bundle_path, device="cpu")


@pytest.fixture()
def betas50() -> np.ndarray:
    """A short linear schedule for closed-form checks."""
    return make_betas("linear", 50)


@pytest.fixture(scope="session")
def tiny():
    return tiny_config()
