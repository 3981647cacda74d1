"""Noise schedules: the betas of the forward process, in float64."""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np


class ScheduleKind(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"


def make_betas(kind: ScheduleKind | str, num_timesteps: int) -> np.ndarray:
    """Betas of shape (T,) in float64, monotonically increasing in (0, 1).

    ``linear`` is DDPM's schedule scaled so any T behaves like T=1000 (clipped to 0.999 for
    T <= 20); ``cosine`` is
    Nichol & Dhariwal's squared-cosine schedule with max beta 0.999.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    kind = ScheduleKind(kind)
    if kind is ScheduleKind.LINEAR:
        scale = 1000 / num_timesteps
        # For T <= 20 the scaled end point 20/T reaches 1 or more: clip like the cosine schedule.
        return np.minimum(np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64), 0.999)

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
        for i in range(num_timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)
