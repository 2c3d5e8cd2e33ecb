"""Per-sample random streams: sample i depends on (seed, i) only, never on the batch size."""

from __future__ import annotations

import numpy as np
import torch

from ddlm.samplers.categorical import sample_categorical
from ddlm.samplers.options import SamplerOptions


class RowRandom:
    """One torch.Generator per sample of a batch, seeded from (seed, sample index).

    ``first_row`` is the index of the batch's first sample among all samples of the run, so
    a run split into batches draws the same samples as one batch.
    """

    def __init__(self, seed: int, batch_size: int, device: torch.device, first_row: int = 0):
        self.device = device
        self.generators = []
        for row in range(first_row, first_row + batch_size):
            state = np.random.SeedSequence([seed, row]).generate_state(2, dtype=np.uint32)
            generator = torch.Generator(device=device)
            generator.manual_seed(int(state[0]) << 32 | int(state[1]))
            self.generators.append(generator)

    def uniform(self, length: int) -> torch.Tensor:
        """(B, length) float64 uniforms, row b from stream b."""
        return torch.stack([
            torch.rand(length, dtype=torch.float64, device=self.device, generator=g) for g in self.generators
        ])

    def categorical(self, logits: torch.Tensor, rows: torch.Tensor, options: SamplerOptions) -> torch.Tensor:
        """A token for each row of ``logits`` (N, V); ``rows`` (N,) says which sample it belongs to."""
        tokens = torch.empty(rows.shape, dtype=torch.long, device=self.device)
        for row in rows.unique().tolist():
            selected = rows == row
            tokens[selected] = sample_categorical(logits[selected], options, self.generators[row])
        return tokens
