"""Per-sample random streams: sample i depends on (seed, i) only, never on its batch.

A row draws from its own generator, and only as many numbers as its own positions need, so
neither the batch size nor the other rows' lengths (the batch's padded width) shift its stream.
"""

from __future__ import annotations

import numpy as np
import torch

from ddlm.samplers.categorical import sample_categorical
from ddlm.samplers.options import SamplerOptions


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block``'s random streams: each block draws afresh, so a row's draws in a
    block never depend on how many steps other rows needed in earlier blocks."""
    state = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) % 2**63


class RowRandom:
    """One torch.Generator per row of a canvas, seeded from (seed, sample index).

    ``active`` (B, L) bool marks each row's own positions (False: batch padding). ``first_row``
    is the index of the batch's first sample among all samples of the run, so a run split into
    batches draws the same samples as one batch.
    """

    def __init__(self, seed: int, active: torch.Tensor, first_row: int = 0):
        self.active = active
        self.device = active.device
        self.generators = []
        for row in range(first_row, first_row + active.shape[0]):
            state = np.random.SeedSequence([seed, row]).generate_state(2, dtype=np.uint32)
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(state[0]) << 32 | int(state[1]))
            self.generators.append(generator)

    def uniform(self, length: int) -> torch.Tensor:
        """(B, length) float64 uniforms, row b from stream b."""
        return torch.stack([
            torch.rand(length, dtype=torch.float64, device=self.device, generator=g) for g in self.generators
        ])

    def positional(self) -> torch.Tensor:
        """(B, L) float64 uniforms at each row's own positions, drawn from its stream in order; 0 at padding."""
        values = torch.zeros(self.active.shape, dtype=torch.float64, device=self.device)
        for row, generator in enumerate(self.generators):
            own = self.active[row]
            values[row, own] = torch.rand(int(own.sum()), dtype=torch.float64, device=self.device, generator=generator)
        return values

    def categorical(self, logits: torch.Tensor, rows: torch.Tensor, options: SamplerOptions) -> torch.Tensor:
        """A token for each row of ``logits`` (N, V); ``rows`` (N,) says which sample it belongs to."""
        tokens = torch.empty(rows.shape, dtype=torch.long, device=self.device)
        for row in rows.unique().tolist():
            selected = rows == row
            tokens[selected] = sample_categorical(logits[selected], options, self.generators[row])
        return tokens
