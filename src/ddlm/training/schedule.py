"""Learning rate: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def learning_rate(progress: float, step: int, peak: float, warmup_steps: int, min_ratio: float) -> float:
    """LR at ``step`` (warm-up) and ``progress`` in [0, 1] of the run (decay)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return peak * (min_ratio + (1 - min_ratio) * cosine)
