"""The NELBO (an upper bound on the NLL; the exact NLL for autoregressive models) on held-out text.

Each sequence is scored ``draws`` times in one batch of copies: the processes draw their noise
levels antithetically over a batch (t_j = (u + j / draws) mod 1), so the draws of a sequence are
stratified over [0, 1]. The standard error is over sequences, so it includes both the Monte-Carlo
noise (which shrinks with more draws) and the spread of the text itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from ddlm.device import autocast
from ddlm.errors import DDLMError


@dataclass
class Likelihood:
    """Per-token likelihood figures of one model on one text."""

    nats_per_token: float
    standard_error: float  # of nats_per_token
    bits_per_token: float
    perplexity: float  # exp(nats per token): an upper bound for diffusion models
    bits_per_byte: float  # total bits over the UTF-8 bytes of the text: comparable across tokenizers
    tokens: int
    bytes: int
    sequences: int
    draws: int
    exact: bool  # True for the autoregressive NLL, False for a NELBO bound

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_likelihood(
    model: torch.nn.Module,
    process,
    rows: Iterable[torch.Tensor],
    byte_lengths: list[int],
    draws: int = 16,
    seed: int = 0,
    precision: str = "fp32",
    progress=None,
) -> Likelihood:
    """Score every row (1-D token ids, PAD allowed) and summarise.

    ``byte_lengths[id]``: UTF-8 bytes each token id stands for. ``progress``: an optional
    callable advanced once per row. An autoregressive process is scored once per row (its NLL
    is exact).
    """
    exact = process.name == "ar"
    draws = 1 if exact else draws
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    bytes_per_id = torch.tensor(byte_lengths, dtype=torch.long)
    per_row, total_nats, total_tokens, total_bytes = [], 0.0, 0, 0
    was_training = model.training
    model.eval()
    for row in rows:
        copies = row.to(device)[None, :].expand(draws, -1)
        with autocast(device, precision):
            loss = process.loss(model, copies, generator)
        row_nats, row_tokens = loss.nelbo_sum / draws, loss.num_tokens // draws
        if row_tokens:
            per_row.append(row_nats / row_tokens)
            total_nats += row_nats
            total_tokens += row_tokens
            total_bytes += int(bytes_per_id[row.cpu()].sum())  # special ids (PAD, EOS) count 0 bytes
        if progress is not None:
            progress()
    model.train(was_training)
    if not total_tokens:
        raise DDLMError("no tokens to score: the evaluation text is empty")
    mean = total_nats / total_tokens
    spread = torch.tensor(per_row, dtype=torch.float64)
    error = float(spread.std() / math.sqrt(len(per_row))) if len(per_row) > 1 else math.nan
    return Likelihood(
        nats_per_token=mean, standard_error=error, bits_per_token=mean / math.log(2), perplexity=math.exp(mean),
        bits_per_byte=total_nats / math.log(2) / max(total_bytes, 1), tokens=total_tokens, bytes=total_bytes,
        sequences=len(per_row), draws=draws, exact=exact,
    )
