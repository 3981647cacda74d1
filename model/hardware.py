"""The machine: a one-line description for bundle provenance and benchmark tables, and what its CPU can do."""

from __future__ import annotations

import platform
from pathlib import Path


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo (its value), or None where the kernel does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform's guess."""
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where the kernel does not say (not Linux)."""
    flags = _cpuinfo("flags")
    return None if flags is None else frozenset(flags.split())


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX). Without them a bfloat16
    convolution is emulated, about 10x slower than float32 (measured on a Zen 3 EPYC). oneDNN's own check is
    not enough: it also says yes on AVX-512 CPUs without bf16 instructions (an Ice Lake-class Xeon here), where
    it emulates. Where the kernel lists no flags, oneDNN's check is all there is."""
    import torch

    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    flags = cpu_flags()
    return supported if flags is None else supported and bool(flags & NATIVE_BF16_FLAGS)
