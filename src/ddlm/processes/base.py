"""What every process provides: its loss (a per-token NELBO in nats) and its description."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    """A training loss and the per-token NELBO it estimates.

    ``loss`` is the differentiable mean NELBO per real token of the batch (nats);
    ``nelbo_sum`` and ``num_tokens`` let callers average exactly over many batches.
    """

    loss: torch.Tensor
    nelbo_sum: float
    num_tokens: int


def log_probs_without(logits: torch.Tensor, excluded: tuple[int, ...]) -> torch.Tensor:
    """log_softmax in float32 over the last axis, with the ``excluded`` ids given probability 0."""
    never = torch.tensor(excluded, device=logits.device)
    return F.log_softmax(logits.float().index_fill(-1, never, -torch.inf), dim=-1)


@dataclass(frozen=True)
class Vocabulary:
    """The ids a process needs to know: vocabulary size and the special tokens."""

    size: int
    mask_id: int
    eos_id: int
    pad_id: int

    @classmethod
    def of(cls, tokenizer: Any) -> Vocabulary:
        return cls(tokenizer.vocab_size, tokenizer.mask_id, tokenizer.eos_id, tokenizer.pad_id)


class Process(Protocol):
    """A generative process over token sequences.

    ``noise_conditioning``: whether the backbone sees the noise level (adaLN): ``required``,
    ``optional`` (the run's ``model.time_conditioning`` decides) or ``none`` (the process has
    no noise level); ``causal``: the backbone uses a causal attention mask.
    """

    name: str
    noise_conditioning: str
    causal: bool

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """One Monte-Carlo draw of the NELBO per real (non-pad) token of the batch ``x0``."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON description that ``build_process`` turns back into the same process."""
