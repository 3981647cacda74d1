"""model.hardware, checked against what the kernel says about this CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.hardware import cpu_flags, cpu_has_fast_bfloat16, cpu_model


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_cpu_model_is_named() -> None:
    assert cpu_model().strip()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc/cpuinfo")
def test_fast_bfloat16_matches_the_cpu_flags() -> None:
    flags = _cpu_flags()
    assert cpu_flags() == frozenset(flags)
    # native bf16 instructions, not oneDNN's own check (which also says yes where it would emulate on AVX-512)
    assert cpu_has_fast_bfloat16() == bool(flags & {"avx512_bf16", "amx_bf16"})
