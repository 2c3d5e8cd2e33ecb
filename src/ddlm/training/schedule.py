"""Learning rate: linear warm-up, then cosine decay to a floor, by steps or by elapsed time."""

from __future__ import annotations

import math


def warmup_progress(step: int, warmup_steps: int, elapsed: float = 0.0, warmup_seconds: float | None = None) -> float:
    """How far step ``step`` is into the warm-up: 1 at its last step, above 1 after it.

    By steps the warm-up lasts ``warmup_steps``; under a time budget it also ends once
    ``elapsed`` reaches ``warmup_seconds``, whichever comes first.
    """
    by_steps = (step + 1) / warmup_steps if warmup_steps > 0 else math.inf
    if warmup_seconds is None:
        return by_steps
    by_time = elapsed / warmup_seconds if warmup_seconds > 0 else math.inf
    return max(by_steps, by_time)


def learning_rate(progress: float, warmup: float, peak: float, min_ratio: float) -> float:
    """LR at ``warmup`` (see ``warmup_progress``) and ``progress`` in [0, 1] of the run (decay)."""
    if warmup <= 1:
        return peak * warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return peak * (min_ratio + (1 - min_ratio) * cosine)
