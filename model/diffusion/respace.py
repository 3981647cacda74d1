"""Few-step sampling: a process that keeps a subset of the original timesteps.

The respaced process's betas are derived from the original ``alphas_cumprod`` at the kept
steps, so q(z_t | z0) is unchanged on those steps, and the network keeps seeing timesteps
on the original scale through ``timestep_map``.
"""

from __future__ import annotations

import numpy as np

from model.diffusion.process import GaussianDiffusion


def space_timesteps(num_timesteps: int, spec: int | str) -> list[int]:
    """The original timesteps to keep, ascending.

    ``spec`` is an int N (N steps evenly spread over [0, T-1], both ends included),
    ``"ddimN"`` (a constant stride, as in DDIM), or a decimal string like ``"10"``.
    """
    if isinstance(spec, str):
        if spec.startswith("ddim"):
            count = int(spec[len("ddim"):])
            _check_count(num_timesteps, count)
            for stride in range(1, num_timesteps + 1):
                steps = list(range(0, num_timesteps, stride))
                if len(steps) == count:
                    return steps
            raise ValueError(f"cannot take exactly {count} steps from {num_timesteps} with a constant stride")
        spec = int(spec)
    count = int(spec)
    _check_count(num_timesteps, count)
    if count == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


def sampling_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The timesteps a few-step sampler visits: ``steps`` evenly spread from T-1 down to
    T/(2·steps), leaving out t = 0.

    Sampling starts from pure noise at T-1, and the last network call happens half a stride
    above 0. With z0 prediction the sample is that call's predicted z0 (eq. 9 at the process's
    first step is the prediction itself), and the network is least reliable at t≈0, which
    training visits least (about 1 draw in T).
    """
    _check_count(num_timesteps, steps)
    if steps == 1:
        return [num_timesteps - 1]
    lowest = min(num_timesteps - steps, max(1, num_timesteps // (2 * steps)))
    kept = sorted({int(round(x)) for x in np.linspace(lowest, num_timesteps - 1, steps)})
    return kept


def _check_count(num_timesteps: int, count: int) -> None:
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"number of steps must be in 1..{num_timesteps}, got {count}")


def respace(process: GaussianDiffusion, use_timesteps: list[int]) -> GaussianDiffusion:
    """A new process over ``use_timesteps`` (original indices) with the same model semantics."""
    kept = sorted(set(int(t) for t in use_timesteps))
    if not kept or kept[0] < 0 or kept[-1] >= process.num_timesteps:
        raise ValueError("use_timesteps must be non-empty original timesteps")
    last_alpha_cumprod = 1.0
    new_betas = []
    for t in kept:
        alpha_cumprod = process.alphas_cumprod[t]
        new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
        last_alpha_cumprod = alpha_cumprod
    return GaussianDiffusion(
        np.asarray(new_betas),
        mean_type=process.mean_type,
        var_type=process.var_type,
        loss_type=process.loss_type,
        vlb_weight=process.vlb_weight,
        timestep_map=process.timestep_map[np.asarray(kept)],
        original_num_timesteps=process.original_num_timesteps,
    )
