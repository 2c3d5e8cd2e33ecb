"""The autoregressive baseline: exact next-token likelihood on the same backbone.

The causal model reads ``[eos] + x0[:-1]`` (EOS doubles as beginning-of-sequence) and
predicts every token of x0, so it is scored on exactly the tokens a diffusion process
is scored on: its NLL per token compares directly with their NELBO per token.
"""

from __future__ import annotations

from typing import Any

import torch

from ddlm.processes.base import LossOutput, Vocabulary, log_probs_without


class Autoregressive:
    """Left-to-right next-token prediction; MASK and PAD are never predicted."""

    name = "ar"
    noise_conditioning = "none"
    causal = True

    def __init__(self, mask_id: int, eos_id: int, pad_id: int):
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.pad_id = pad_id

    @classmethod
    def from_config(cls, config: dict[str, Any], vocab: Vocabulary) -> Autoregressive:
        """The process for ``vocab``; it has no settings (diffusion keys in ``config`` are ignored)."""
        return cls(mask_id=vocab.mask_id, eos_id=vocab.eos_id, pad_id=vocab.pad_id)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log p(next token) in float32, with MASK and PAD excluded. Any leading shape."""
        return log_probs_without(logits, (self.mask_id, self.pad_id))

    def model_noise(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Noise level 0 (clean tokens), which a backbone without noise conditioning ignores."""
        return torch.zeros(batch_size, device=device)

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """Exact NLL per real (non-pad) token of the batch; ``generator`` is unused (no noise)."""
        return LossOutput.per_real_token(self.nll_rows(model, x0, x0 != self.pad_id).sum(), x0, self.pad_id)

    def sft_loss(
        self, model: torch.nn.Module, x0: torch.Tensor, response: torch.Tensor, generator: torch.Generator | None = None
    ) -> LossOutput:
        """Next-token NLL of the response positions only (the prompt is read, never scored), each row's
        divided by its response length; ``generator`` is unused (no noise)."""
        return LossOutput.per_response(self.nll_rows(model, x0, response), response)

    def nll_rows(self, model: torch.nn.Module, x0: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
        """-sum of log p(x0_i | x0_<i) over the ``scored`` positions of each row (B,), in nats."""
        inputs = torch.cat((torch.full_like(x0[:, :1], self.eos_id), x0[:, :-1]), dim=1)  # [eos] + x0[:-1]
        logits = model(inputs, self.model_noise(x0.shape[0], x0.device))
        nll = torch.zeros(x0.shape, device=x0.device, dtype=torch.float32)
        nll[scored] = -self.log_probs(logits[scored]).gather(-1, x0[scored][:, None]).squeeze(-1)
        return nll.sum(dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}
