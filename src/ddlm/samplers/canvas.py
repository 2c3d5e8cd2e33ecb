"""The canvas a sampler fills: which positions are given, which are generated, which are padding.

A canvas row is a list of token ids with ``None`` where a token is to be generated: a prompt
followed by ``length`` Nones, an infill template such as ``The [MASK*5] sat`` (see
:func:`parse_template`), or a prompt, a gap and a fixed suffix. Rows of different lengths are
right-padded; padding is hidden from attention through ``key_mask``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddlm.errors import DDLMError

Row = Sequence[int | None]

_MASK_TOKEN = re.compile(r"\[MASK(?:\*(\d+))?\]")


@dataclass
class Canvas:
    """Token ids (B, L) with MASK at every position to generate, and where each kind of position is."""

    tokens: torch.Tensor  # (B, L) long: given tokens, MASK to generate, PAD after a row's end
    generated: torch.Tensor  # (B, L) bool: positions the sampler fills
    active: torch.Tensor  # (B, L) bool: positions inside the row (False: padding)

    @classmethod
    def from_rows(cls, rows: Sequence[Row], mask_id: int, pad_id: int, device: torch.device | str = "cpu") -> Canvas:
        """A canvas from rows of token ids with None at the positions to generate."""
        if not rows:
            raise DDLMError("no samples to draw: pass at least one prompt or template", field="num_samples")
        width = max(len(row) for row in rows)
        tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
        generated = torch.zeros((len(rows), width), dtype=torch.bool)
        for index, row in enumerate(rows):
            if not any(token is None for token in row):
                raise DDLMError(f"sample {index} has no position to generate; add [MASK] to the template or a length",
                                field="length")
            generated[index, : len(row)] = torch.tensor([token is None for token in row])
            tokens[index, : len(row)] = torch.tensor([mask_id if token is None else token for token in row])
        active = torch.arange(width)[None, :] < torch.tensor([len(row) for row in rows])[:, None]
        return cls(tokens.to(device), generated.to(device), active.to(device))

    @classmethod
    def from_prompts(
        cls, prompts: Sequence[Sequence[int]], length: int, mask_id: int, pad_id: int,
        device: torch.device | str = "cpu", suffix: Sequence[int] = (),
    ) -> Canvas:
        """One row per prompt: the prompt, ``length`` positions to generate, then ``suffix``."""
        if length < 1:
            raise DDLMError(f"length must be at least 1, got {length}", field="length")
        return cls.from_rows([[*prompt, *[None] * length, *suffix] for prompt in prompts], mask_id, pad_id, device)

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def width(self) -> int:
        return self.tokens.shape[1]

    @property
    def fixed(self) -> torch.Tensor:
        """(B, L) bool: given tokens, never changed."""
        return self.active & ~self.generated

    @property
    def key_mask(self) -> torch.Tensor | None:
        """What the model's attention may see: None when no row is padded."""
        return None if bool(self.active.all()) else self.active

    def generated_rank(self) -> torch.Tensor:
        """(B, L) long: the index of each generated position among its row's generated positions (-1 elsewhere)."""
        return torch.where(self.generated, self.generated.long().cumsum(dim=1) - 1, -1)

    def prefix_length(self) -> int | None:
        """The common prompt length when every row is prompt + generated positions with no padding, else None."""
        first = self.generated.long().argmax(dim=1)
        if self.key_mask is not None or bool((first != first[0]).any()):
            return None
        start = int(first[0])
        return start if bool(self.generated[:, start:].all()) else None


def parse_template(
    template: str, encode: Callable[[str], list[int]], max_tokens: int | None = None
) -> list[int | None]:
    """Token ids with None for each mask of an infill template.

    ``[MASK]`` is one position to generate and ``[MASK*n]`` is n of them; ``\\[`` and ``\\]``
    are literal brackets and ``\\\\`` a literal backslash. Text between masks is encoded with
    ``encode`` piece by piece, so a BPE merge never crosses a mask. A template longer than
    ``max_tokens`` is refused before its masks are allocated.
    """
    row: list[int | None] = []
    text: list[str] = []
    position = 0
    while position < len(template):
        char = template[position]
        if char == "\\" and position + 1 < len(template) and template[position + 1] in "[]\\":
            text.append(template[position + 1])
            position += 2
            continue
        if char == "[":
            match = _MASK_TOKEN.match(template, position)
            if not match:
                raise DDLMError(
                    f"bad infill template at character {position}: {template[position:position + 12]!r}; "
                    r"write [MASK] or [MASK*n], and \[ for a literal bracket", field="infill"
                )
            count = int(match.group(1) or 1)
            if count < 1:
                raise DDLMError(f"bad infill template: {match.group(0)} asks for no position; use n >= 1", field="infill")
            row.extend(encode("".join(text)) if text else [])
            check_template_size(len(row) + count, max_tokens)
            row.extend([None] * count)
            text, position = [], match.end()
            continue
        if char == "]":
            raise DDLMError(rf"bad infill template: unmatched ']' at character {position}; write \] for a literal bracket",
                            field="infill")
        text.append(char)
        position += 1
    row.extend(encode("".join(text)) if text else [])
    check_template_size(len(row), max_tokens)
    if not any(token is None for token in row):
        raise DDLMError("the infill template has no [MASK]; add [MASK] or [MASK*n] where text should be generated",
                        field="infill")
    return row


def check_template_size(tokens: int, max_tokens: int | None) -> None:
    if max_tokens is not None and tokens > max_tokens:
        raise DDLMError(
            f"the infill template is at least {tokens} tokens but the model's context is {max_tokens}; "
            "shorten it or use smaller [MASK*n]", field="infill"
        )
