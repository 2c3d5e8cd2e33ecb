"""What every process provides: its loss (a per-token NELBO in nats) and its description."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ddlm.errors import DDLMError


@dataclass
class LossOutput:
    """A training loss and the per-token NELBO it estimates.

    ``loss`` is the differentiable mean NELBO per real token of the batch (nats);
    ``nelbo_sum`` and ``num_tokens`` let callers average exactly over many batches.
    """

    loss: torch.Tensor
    nelbo_sum: float
    num_tokens: int

    @classmethod
    def per_real_token(cls, nelbo: torch.Tensor, x0: torch.Tensor, pad_id: int) -> LossOutput:
        """The loss of a batch ``x0`` whose NELBO, summed over the batch, is ``nelbo`` (nats)."""
        num_tokens = int((x0 != pad_id).sum())
        return cls(loss=nelbo / num_tokens, nelbo_sum=float(nelbo.detach()), num_tokens=num_tokens)

    @classmethod
    def per_response(cls, nelbo: torch.Tensor, response: torch.Tensor) -> LossOutput:
        """The fine-tuning loss of rows whose response NELBOs (nats, one per row) are ``nelbo`` (B,):
        each row's NELBO over its response length |r0| (``response`` (B, L) marks those positions),
        averaged over the rows, as in LLaDA's SFT; ``nelbo_sum`` / ``num_tokens`` is the NELBO per
        response token over the batch."""
        lengths = response.sum(dim=1)
        if not bool((lengths > 0).all()):
            raise DDLMError("every fine-tuning row needs at least one response position (its end-of-text)")
        return cls(loss=(nelbo / lengths).mean(), nelbo_sum=float(nelbo.detach().sum()), num_tokens=int(lengths.sum()))


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The backbone inside a data-parallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


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


class ContinuousTime:
    """Training times of a continuous-time process: t in [eps, 1], spread evenly over the batch
    (antithetic, or low-discrepancy, sampling) unless ``antithetic`` is False."""

    eps: float
    antithetic: bool

    def uniforms(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        """(B,) float64 uniforms in [0, 1): (u + j/B) mod 1 for one draw u, or B independent draws."""
        if self.antithetic:
            u = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
            return (u + torch.arange(batch_size, device=device, dtype=torch.float64) / batch_size) % 1
        return torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)

    def sample_times(
        self,
        batch_size: int,
        device: torch.device,
        generator: torch.Generator | None = None,
        within: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """(B,) float64 times in [eps, 1], or in the interval ``within``."""
        low, high = within or (self.eps, 1.0)
        return low + (high - low) * self.uniforms(batch_size, device, generator)


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

    def sft_loss(
        self, model: torch.nn.Module, x0: torch.Tensor, response: torch.Tensor, generator: torch.Generator | None = None
    ) -> LossOutput:
        """One draw of the fine-tuning loss (:meth:`LossOutput.per_response`): the NELBO of the positions
        ``response`` (B, L) marks given the others (the prompt), which are never corrupted nor scored."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON description that ``build_process`` turns back into the same process."""
