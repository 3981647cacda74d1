"""The progress callback shared by inference's steps: sampling reports up to ``SAMPLING_SHARE``,
resampling and writing the rest."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float], None]

SAMPLING_SHARE = 0.9  # progress fraction reported once sampling is done; the rest is resampling/writing


def report(progress: Progress | None, fraction: float) -> None:
    """Call ``progress(fraction)`` when there is a callback."""
    if progress is not None:
        progress(fraction)
