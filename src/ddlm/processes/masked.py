"""Masked (absorbing-state) diffusion: MDLM, MD4 and LLaDA as one family.

Forward: each token stays visible with probability alpha(t), else becomes MASK.
Loss: the continuous-time NELBO E_t[w(t) sum_{masked i} -log p(x0_i | x_t)] with the
"subs" parameterisation (MASK is never predicted; visible tokens are carried over).

Two unbiased estimators of the same NELBO:
- ``time``: draw t, mask each token with probability 1 - alpha(t), weight by w(t).
- ``count`` (models that do not see t): integrating t out gives exactly
  NELBO = sum_{k=1..n} (1/k) E_{|S|=k}[sum_{i in S} -log p(x0_i | x_S masked)] for a row of
  n tokens, since the integral of w(t) Binom(k; n, 1 - alpha(t)) dt is 1/k for every
  schedule. So draw k uniformly from 1..n, mask exactly k tokens, weight by n/k. Its weights
  stay bounded where w(t) does not, which lowers the gradient variance.
"""

from __future__ import annotations

from typing import Any

import torch

from ddlm.errors import DDLMError
from ddlm.model import NoiseLevelMissing
from ddlm.processes.base import ContinuousTime, LossOutput, Vocabulary, log_probs_without
from ddlm.processes.schedules import Schedule, schedule_from_config

ESTIMATORS = ("time", "count")


def lookahead_attention(length: int, lookahead: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(L, L) bool: position i sees the keys j <= i + lookahead (0: causal; L - 1 and more: full)."""
    positions = torch.arange(length, device=device)
    return positions[None, :] <= positions[:, None] + lookahead


class MaskedDiffusion(ContinuousTime):
    """The masked diffusion process for a vocabulary with ``mask_id`` and ``pad_id``."""

    name = "masked"
    noise_conditioning = "optional"  # not needed in theory; faster learning in short runs
    causal = False
    default_schedule = "linear"

    def __init__(
        self,
        schedule: Schedule,
        mask_id: int,
        pad_id: int,
        eps: float = 1e-3,
        antithetic: bool = True,
        estimator: str = "time",
        eos_id: int | None = None,
    ):
        if estimator not in ESTIMATORS:
            raise DDLMError(f"unknown NELBO estimator {estimator!r}; choose one of {list(ESTIMATORS)}")
        self.schedule = schedule
        self.mask_id = mask_id
        self.pad_id = pad_id
        self.eps = eps
        self.antithetic = antithetic
        self.estimator = estimator
        self.eos_id = eos_id
        self.lookahead: int | None = None  # in training: keys past each position it sees (None: all; adaptation)

    @classmethod
    def from_config(cls, config: dict[str, Any], vocab: Vocabulary) -> MaskedDiffusion:
        """The process ``config`` describes (``to_dict``'s keys; a missing schedule is the linear one)."""
        schedule = schedule_from_config(config.get("schedule"), cls.default_schedule)
        return cls(schedule, mask_id=vocab.mask_id, pad_id=vocab.pad_id,
                   eps=config.get("eps", 1e-3), antithetic=config.get("antithetic", True),
                   estimator=config.get("estimator", "time"), eos_id=vocab.eos_id)

    def corrupt_by_count(
        self, x0: torch.Tensor, generator: torch.Generator | None = None, maskable: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t with exactly k of the n real tokens (or ``maskable`` positions) of each row masked, k uniform
        in 1..n; returns x_t and the NELBO weight n / k of each row (0 for a row with nothing to mask)."""
        real = x0 != self.pad_id if maskable is None else maskable
        n = real.sum(dim=1)
        k = 1 + (self.uniforms(x0.shape[0], x0.device, generator) * n).long().clamp(max=n - 1)
        scores = torch.rand(x0.shape, generator=generator, device=x0.device).masked_fill(~real, 2.0)
        rank = scores.argsort(dim=1).argsort(dim=1)  # a uniformly random order of the real tokens
        xt = torch.where(rank < k[:, None], torch.full_like(x0, self.mask_id), x0)
        return xt, (n / k.clamp(min=1)).float()

    def mask_probability(self, t: torch.Tensor) -> torch.Tensor:
        """1 - alpha(t): the fraction of masked tokens, also the model's noise input."""
        return 1 - self.schedule.alpha(t)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None,
                maskable: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: each non-pad token of x0 (B, L) (or each ``maskable`` position) replaced by MASK with
        probability 1 - alpha(t)."""
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        masked = (u < self.mask_probability(t)[:, None]) & (x0 != self.pad_id if maskable is None else maskable)
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log p(x0 | x_t) in float32; MASK and PAD are never predicted (subs). Any leading shape."""
        return log_probs_without(logits, (self.mask_id, self.pad_id))

    def model_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The noise level the model is given at time t: the mask probability (a model without
        noise conditioning ignores it)."""
        return self.mask_probability(t)

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

    def training_attention(self, model: torch.nn.Module, length: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The attention keyword of a training call: the look-ahead pattern while it is set, else none (full)."""
        if not model.training or self.lookahead is None:
            return {}
        return {"attention": lookahead_attention(length, self.lookahead, device)}

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """One Monte-Carlo draw of the NELBO per real (non-pad) token of the batch (in training, under the
        look-ahead attention while one is set)."""
        nelbo = self.nelbo_draw(model, x0, x0 != self.pad_id, generator).sum()
        return LossOutput.per_real_token(nelbo, x0, self.pad_id)

    def sft_loss(
        self, model: torch.nn.Module, x0: torch.Tensor, response: torch.Tensor, generator: torch.Generator | None = None
    ) -> LossOutput:
        """LLaDA's SFT loss: the prompt stays clean, the response (with its end-of-text padding) is masked at
        rate 1 - alpha(t) (t for the linear schedule), and each row's draw -sum_{masked i} w(t) log p(x0_i | x_t)
        is divided by the row's response length (:meth:`LossOutput.per_response`)."""
        return LossOutput.per_response(self.nelbo_draw(model, x0, response, generator), response)

    def nelbo_draw(
        self, model: torch.nn.Module, x0: torch.Tensor, maskable: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One NELBO draw per row (B,) in nats, of the ``maskable`` positions given the others."""
        attention = self.training_attention(model, x0.shape[1], x0.device)
        if self.estimator == "count":
            xt, weight = self.corrupt_by_count(x0, generator, maskable)
            try:
                logits = model(xt, **attention)  # no noise level: this estimator integrates it out
            except NoiseLevelMissing:
                raise DDLMError("the count estimator needs a model that does not see the noise level; "
                                "set model.time_conditioning=false or use process.estimator=time") from None
            return weight * self.masked_nll(logits, x0, xt).sum(dim=1)
        t = self.sample_times(x0.shape[0], x0.device, generator)
        xt = self.corrupt(x0, t, generator, maskable)
        logits = model(xt, self.model_noise(t), **attention)
        return self.nelbo_per_sequence(self.masked_nll(logits, x0, xt), t)

    def reveal_probability(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Probability that a position masked at time t is revealed by time s < t."""
        alpha_t, alpha_s = self.schedule.alpha(t.double()), self.schedule.alpha(s.double())
        return ((alpha_s - alpha_t) / (1 - alpha_t)).clamp(0, 1)

    def to_dict(self) -> dict:
        return {"name": self.name, "schedule": self.schedule.to_dict(), "eps": self.eps,
                "antithetic": self.antithetic, "estimator": self.estimator}
