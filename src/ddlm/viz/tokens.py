"""Steps as views: each sample of a step, position by position (token, role, confidence), read by every view.

The terminal view, the GIF animations, the web page and the API's step events all turn a
:class:`~ddlm.samplers.SamplerStep` into :class:`RowView` s through :func:`step_views`; a
:class:`DrawMemory` carries what a view remembers across a batch's steps (the confidence and
the step of each position's last draw).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import torch

from ddlm.samplers import SamplerStep
from ddlm.samplers.step import MASK_GLYPH
from ddlm.tokenizers import Tokenizer

REMASKED_GLYPH = "▒"  # a position masked again by this step


class Kind(Enum):
    """The role of a position at one step."""

    GIVEN = "given"  # prompt, infill context or suffix: never changes
    MASKED = "masked"  # still to generate
    REVEALED = "revealed"  # given a token by this step
    REMASKED = "remasked"  # masked again by this step
    GENERATED = "generated"  # given a token by an earlier step


class TokenPieces:
    """The text of each token id on its own (cached); special ids show as nothing, except MASK."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = MASK_GLYPH if token == self.tokenizer.mask_id else self.tokenizer.decode([token])
        return self.cache[token]


@dataclass
class RowView:
    """One sample at one step, position by position (its padding left out)."""

    tokens: list[int]  # token ids, MASK where masked
    given: list[bool]  # prompt, infill context or suffix
    revealed: list[bool]  # given a token by this step
    remasked: list[bool]  # masked again by this step
    confidence: list[float | None]  # the model's probability of the token when it was drawn (None: not drawn, or unknown)
    revealed_at: list[int]  # the step that last revealed the position (-1: none)

    @property
    def generated(self) -> list[bool]:
        """Positions the sampler fills."""
        return [not given for given in self.given]

    @property
    def changed(self) -> list[int]:
        """The positions this step revealed or masked again."""
        return [position for position, (revealed, remasked) in enumerate(zip(self.revealed, self.remasked))
                if revealed or remasked]

    @staticmethod
    def where(flags: list[bool]) -> list[int]:
        """The positions whose flag is set (e.g. ``view.where(view.revealed)``)."""
        return [position for position, flag in enumerate(flags) if flag]

    def kinds(self, mask_id: int) -> list[Kind]:
        """The :class:`Kind` of each position."""
        return [Kind.GIVEN if given else Kind.REMASKED if remasked else Kind.REVEALED if revealed
                else Kind.MASKED if token == mask_id else Kind.GENERATED
                for token, given, revealed, remasked in zip(self.tokens, self.given, self.revealed, self.remasked)]


class DrawMemory:
    """The confidence and step of each position's last draw, followed over the steps of a stream's batches."""

    def __init__(self) -> None:
        self.confidence: torch.Tensor | None = None  # (B, L) float64, NaN: not drawn (or no confidence recorded)
        self.revealed_at: torch.Tensor | None = None  # (B, L) long, -1: not revealed
        self.last: tuple[int, int] | None = None  # (first_sample, index) of the last step seen

    def update(self, step: SamplerStep) -> None:
        """Record ``step``; a new batch (or a stream started again) starts from nothing drawn."""
        if self.last is None or step.first_sample != self.last[0] or step.index <= self.last[1]:
            self.confidence = torch.full(step.tokens.shape, float("nan"), dtype=torch.float64)
            self.revealed_at = torch.full(step.tokens.shape, -1, dtype=torch.long)
        self.last = (step.first_sample, step.index)
        revealed, remasked = step.revealed.cpu(), step.remasked.cpu()
        self.confidence[revealed | remasked] = float("nan")
        if step.confidence is not None:
            self.confidence[revealed] = step.confidence.cpu().double()[revealed]
        self.revealed_at[revealed] = step.index
        self.revealed_at[remasked] = -1


def step_views(step: SamplerStep, memory: DrawMemory | None = None, rows: Iterable[int] | None = None) -> list[RowView]:
    """Each sample of ``step`` (``rows`` of the batch, by default all) as a :class:`RowView`.

    With ``memory`` (one per stream, fed every step in order), each position's confidence and reveal step
    are those of its last draw; without, those of this step's draws.
    """
    memory = memory if memory is not None else DrawMemory()
    memory.update(step)
    return [row_view(step, memory, row) for row in (range(step.tokens.shape[0]) if rows is None else rows)]


def row_view(step: SamplerStep, memory: DrawMemory, row: int) -> RowView:
    """Sample ``row`` of ``step``, its draws as ``memory`` (updated with ``step``) remembers them."""
    active = step.canvas.active[row].cpu()

    def positions(values: torch.Tensor) -> list:
        return values[row].cpu()[active].tolist()

    return RowView(
        tokens=positions(step.tokens),
        given=positions(step.canvas.fixed),
        revealed=positions(step.revealed),
        remasked=positions(step.remasked),
        confidence=[value if math.isfinite(value) else None for value in positions(memory.confidence)],
        revealed_at=positions(memory.revealed_at),
    )
