"""Masked (absorbing-state) diffusion: MDLM, MD4 and LLaDA as one family.

Forward: each token stays visible with probability alpha(t), else becomes MASK.
Loss: the continuous-time NELBO E_t[w(t) sum_{masked i} -log p(x0_i | x_t)] with the
"subs" parameterisation (MASK is never predicted; visible tokens are carried over).
"""

from __future__ import annotations

import torch

from typing import Any

from ddlm.processes.base import LossOutput, Vocabulary, log_probs_without
from ddlm.processes.schedules import Schedule, build_schedule


class MaskedDiffusion:
    """The masked diffusion process for a vocabulary with ``mask_id`` and ``pad_id``."""

    name = "masked"
    time_conditioned = False  # allowed (model.time_conditioning) but not needed
    causal = False

    def __init__(
        self,
        schedule: Schedule,
        mask_id: int,
        pad_id: int,
        eps: float = 1e-3,
        antithetic: bool = True,
    ):
        self.schedule = schedule
        self.mask_id = mask_id
        self.pad_id = pad_id
        self.eps = eps
        self.antithetic = antithetic

    @classmethod
    def from_config(cls, config: dict[str, Any], vocab: Vocabulary) -> MaskedDiffusion:
        schedule_config = dict(config.get("schedule", {"name": "linear"}))
        schedule = build_schedule(schedule_config.pop("name"), **schedule_config)
        return cls(schedule, mask_id=vocab.mask_id, pad_id=vocab.pad_id,
                   eps=config.get("eps", 1e-3), antithetic=config.get("antithetic", True))

    def sample_times(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Times in [eps, 1]; antithetic (evenly spread over the batch) unless disabled."""
        if self.antithetic:
            u = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
            u = (u + torch.arange(batch_size, device=device, dtype=torch.float64) / batch_size) % 1
        else:
            u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
        return (self.eps + (1 - self.eps) * u).float()

    def mask_probability(self, t: torch.Tensor) -> torch.Tensor:
        """1 - alpha(t): the fraction of masked tokens, also the model's noise input."""
        return 1 - self.schedule.alpha(t)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t: each non-pad token of x0 (B, L) replaced by MASK with probability 1 - alpha(t)."""
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        masked = (u < self.mask_probability(t)[:, None]) & (x0 != self.pad_id)
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log p(x0 | x_t) in float32; MASK and PAD are never predicted (subs). Any leading shape."""
        return log_probs_without(logits, (self.mask_id, self.pad_id))

    def model_noise(self, model: torch.nn.Module, t: torch.Tensor) -> torch.Tensor | None:
        """The noise level passed to a time-conditioned model (None for one without)."""
        return self.mask_probability(t) if model.config.time_conditioning else None

    def masked_nll(self, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """-log p(x0_i | x_t) at masked positions, 0 at visible ones (carry-over); (B, L)."""
        masked = xt == self.mask_id
        nll = torch.zeros(x0.shape, device=x0.device, dtype=torch.float32)
        picked = self.log_probs(logits[masked])
        nll[masked] = -picked.gather(-1, x0[masked][:, None]).squeeze(-1)
        return nll

    def nelbo_per_sequence(self, masked_nll: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """w(t) times the summed masked NLL: one NELBO draw per sequence (B,), in nats."""
        return self.schedule.weight(t.double()).float() * masked_nll.sum(dim=1)

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """One Monte-Carlo draw of the NELBO per real (non-pad) token of the batch."""
        t = self.sample_times(x0.shape[0], x0.device, generator)
        xt = self.corrupt(x0, t, generator)
        logits = model(xt, self.model_noise(model, t))
        nelbo = self.nelbo_per_sequence(self.masked_nll(logits, x0, xt), t).sum()
        num_tokens = int((x0 != self.pad_id).sum())
        return LossOutput(loss=nelbo / num_tokens, nelbo_sum=float(nelbo.detach()), num_tokens=num_tokens)

    def reveal_probability(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Probability that a position masked at time t is revealed by time s < t."""
        alpha_t, alpha_s = self.schedule.alpha(t.double()), self.schedule.alpha(s.double())
        return ((alpha_s - alpha_t) / (1 - alpha_t)).clamp(0, 1)

    def to_dict(self) -> dict:
        return {"name": self.name, "schedule": self.schedule.to_dict(), "eps": self.eps, "antithetic": self.antithetic}
