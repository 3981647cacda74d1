"""The one range check of the sampling parameters (model.bundle.manifest.check_sampling)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from model.bundle.config import SamplingConfig
from model.bundle.manifest import SAMPLING_RANGES, SamplingCaps, SamplingRangeError, check_sampling, resolve_sampling
from model.errors import InputError


def test_the_model_range_is_the_bundle_config_bound() -> None:
    for name, (low, high) in SAMPLING_RANGES.items():
        SamplingConfig(**{name: low})
        SamplingConfig(**{name: high})
        with pytest.raises(ValueError):
            SamplingConfig(**{name: high + 1})


@pytest.mark.parametrize(
    ("ensemble", "steps", "caps", "parameter", "allowed"),
    [
        (0, None, SamplingCaps(), "ensemble", (1, 64)),
        (65, None, SamplingCaps(), "ensemble", (1, 64)),
        (None, 1001, SamplingCaps(), "steps", (1, 1000)),
        (33, 10, SamplingCaps(max_ensemble=32), "ensemble", (1, 32)),
        (5, 51, SamplingCaps(max_steps=50), "steps", (1, 50)),
        (True, None, SamplingCaps(), "ensemble", (1, 64)),
    ],
)
def test_out_of_range_names_the_parameter_and_the_range(
    ensemble: int | None, steps: int | None, caps: SamplingCaps, parameter: str, allowed: tuple[int, int]
) -> None:
    with pytest.raises(SamplingRangeError) as info:
        check_sampling(ensemble, steps, caps)
    assert isinstance(info.value, InputError)
    assert (info.value.parameter, info.value.allowed) == (parameter, allowed)
    assert f"{allowed[0]}..{allowed[1]}" in str(info.value)
    assert info.value.detail() == {"message": str(info.value), "parameter": parameter, "allowed": list(allowed)}


def test_a_cap_above_the_model_range_leaves_the_range() -> None:
    check_sampling(64, 1000, SamplingCaps(max_ensemble=100, max_steps=5000))
    with pytest.raises(SamplingRangeError, match=r"1\.\.64, got 65") as info:
        check_sampling(65, None, SamplingCaps(max_ensemble=100))
    assert "LATENTSEG_MAX_ENSEMBLE" not in str(info.value)


def test_resolve_takes_the_bundle_defaults_unless_given() -> None:
    defaults = SimpleNamespace(ensemble=3, steps=2)
    assert resolve_sampling(defaults, None, None) == (3, 2)
    assert resolve_sampling(defaults, 7, None) == (7, 2)
    with pytest.raises(SamplingRangeError, match="LATENTSEG_MAX_ENSEMBLE"):
        resolve_sampling(SimpleNamespace(ensemble=40, steps=10), None, None, SamplingCaps(max_ensemble=32))
