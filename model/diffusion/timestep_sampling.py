"""Timestep samplers for training: uniform, and importance sampling by loss second moment.

Both return ``(t, weights)`` with weights 1/(T·p(t)) so that the weighted loss is an
unbiased estimate of the uniform-t loss. No torch.distributed and no global RNG: under DDP
each rank updates its own history from its own losses (an all-gather is optional and
done by the trainer if it wants one).
"""

from __future__ import annotations

import numpy as np
import torch


def _draw(p: np.ndarray, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.from_numpy(p)
    t = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
    weights = 1.0 / (len(p) * probs[t])
    return t.long(), weights.float()


class UniformSampler:
    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = num_timesteps

    def weights(self) -> np.ndarray:
        return np.ones(self.num_timesteps, dtype=np.float64)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights()
        return _draw(w / w.sum(), batch_size, generator)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        return None


class LossSecondMomentSampler:
    """p(t) ∝ sqrt(E[L_t²]) over the last ``history`` losses of each t, mixed with
    ``uniform_prob`` of uniform; uniform until every t has a full history."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 1e-3) -> None:
        self.num_timesteps = num_timesteps
        self.history = history
        self.uniform_prob = uniform_prob
        self._losses = np.zeros((num_timesteps, history), dtype=np.float64)
        self._counts = np.zeros(num_timesteps, dtype=np.int64)

    @property
    def warmed_up(self) -> bool:
        return bool((self._counts == self.history).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up:
            return np.ones(self.num_timesteps, dtype=np.float64)
        w = np.sqrt(np.mean(self._losses**2, axis=-1))
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights()
        return _draw(w / w.sum(), batch_size, generator)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for step, loss in zip(t.detach().cpu().tolist(), losses.detach().cpu().tolist(), strict=True):
            if self._counts[step] == self.history:
                self._losses[step, :-1] = self._losses[step, 1:]
                self._losses[step, -1] = loss
            else:
                self._losses[step, self._counts[step]] = loss
                self._counts[step] += 1

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"losses": self._losses.copy(), "counts": self._counts.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._losses = np.asarray(state["losses"], dtype=np.float64).copy()
        self._counts = np.asarray(state["counts"], dtype=np.int64).copy()
