"""What samplers return: final tokens, cost, and an optional per-step trace."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddlm.samplers.canvas import Canvas


@dataclass
class TraceStep:
    """The canvas after one reverse step, and which positions that step changed."""

    step: int
    time: float
    tokens: torch.Tensor  # (B, L) token ids after the step
    changed: torch.Tensor  # (B, L) bool: positions revealed (or altered) by the step
    confidence: torch.Tensor | None = None  # (B, L) model probability of the drawn token where one was drawn, else NaN


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # (B, L) final token ids
    model_calls: int
    trace: list[TraceStep] = field(default_factory=list)
    canvas: Canvas | None = None  # what was asked for: given, generated and padding positions
