"""What every process returns from its loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    """A training loss and the per-token NELBO it estimates.

    ``loss`` is the differentiable mean NELBO per real token of the batch (nats);
    ``nelbo_sum`` and ``num_tokens`` let callers average exactly over many batches.
    """

    loss: torch.Tensor
    nelbo_sum: float
    num_tokens: int
