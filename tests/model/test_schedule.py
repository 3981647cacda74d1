import math

import numpy as np
import pytest

from model.diffusion.schedule import make_betas


def test_linear_matches_ddpm_at_1000_steps() -> None:
    betas = make_betas("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)


def test_linear_is_rescaled_for_fewer_steps() -> None:
    betas = make_betas("linear", 100)
    assert betas[0] == pytest.approx(1e-3) and betas[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_betas_increase_in_open_unit_interval(kind: str) -> None:
    betas = make_betas(kind, 200)
    assert (betas > 0).all() and (betas < 1).all()
    assert (np.diff(betas) >= 0).all()


def test_cosine_alphas_cumprod_follow_squared_cosine() -> None:
    T = 100
    betas = make_betas("cosine", T)
    f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = np.array([f[t + 1] / f[0] for t in range(T)])
    alphas_cumprod = np.cumprod(1 - betas)
    unclipped = betas < 0.999
    assert np.allclose(alphas_cumprod[unclipped], expected[unclipped], rtol=1e-9, atol=1e-12)
    assert betas.max() <= 0.999


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        make_betas("linear", 0)
    with pytest.raises(ValueError):
        make_betas("quadratic", 10)


@pytest.mark.parametrize("T", [1, 5, 10, 20])
def test_short_linear_schedules_stay_valid(T: int) -> None:
    betas = make_betas("linear", T)
    assert (betas > 0).all() and (betas < 1).all()
    assert np.isfinite(np.sqrt(1.0 / np.cumprod(1 - betas))).all()
