"""What each canvas position shows in a view: its text and its kind (given, masked, just revealed, ...)."""

from __future__ import annotations

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


def position_kinds(step: SamplerStep, row: int, mask_id: int) -> list[Kind]:
    """The kind of each active position of sample ``row`` (of its batch) at ``step``."""
    canvas = step.canvas
    masked = step.tokens[row] == mask_id
    kinds = []
    for given, active, is_masked, revealed, remasked in zip(
        canvas.fixed[row].tolist(), canvas.active[row].tolist(), masked.tolist(),
        step.revealed[row].tolist(), step.remasked[row].tolist(),
    ):
        if not active:
            continue
        if given:
            kinds.append(Kind.GIVEN)
        elif remasked:
            kinds.append(Kind.REMASKED)
        elif revealed:
            kinds.append(Kind.REVEALED)
        else:
            kinds.append(Kind.MASKED if is_masked else Kind.GENERATED)
    return kinds


class RevealClock:
    """When each position of a batch was last revealed: the step index, -1 for never (or given)."""

    def __init__(self) -> None:
        self.revealed_at: torch.Tensor | None = None

    def update(self, step: SamplerStep) -> torch.Tensor:
        """Record ``step`` (steps of one batch, in order) and return (B, L) reveal step indices."""
        if self.revealed_at is None or step.index == 0:
            self.revealed_at = torch.full(step.tokens.shape, -1, dtype=torch.long)
        self.revealed_at[step.revealed.cpu()] = step.index
        self.revealed_at[step.remasked.cpu()] = -1
        return self.revealed_at
