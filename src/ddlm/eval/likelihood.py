"""The NELBO (an upper bound on the NLL; the exact NLL for autoregressive models) on held-out text,
and the exact NLL of writing it left to right.

Each sequence is scored ``draws`` times in one batch of copies: the processes draw their noise
levels antithetically over a batch (t_j = (u + j / draws) mod 1), so the draws of a sequence are
stratified over [0, 1]. The standard error is over sequences, so it includes both the Monte-Carlo
noise (which shrinks with more draws) and the spread of the text itself.

The NELBO of a diffusion model averages over every order of unmasking. One order, left to right
with one token per step (in each block for block diffusion, the earlier blocks clean), is a proper
model of its own: the sampler ``policy="left-to-right"`` with as many steps as tokens, at
temperature 1. :func:`left_to_right_likelihood` gives its exact NLL, which an autoregressive
model's NLL can be compared with; it costs one model call per token of a row for masked diffusion
and one per position in a block for block diffusion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from ddlm.device import autocast
from ddlm.errors import DDLMError
from ddlm.eval.harness import SCORED_PROCESSES, Scorer


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
    exact: bool  # True for an exact NLL (autoregressive, or written left to right), False for a NELBO bound

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

    def score_row(row: torch.Tensor) -> tuple[float, int]:
        copies = row.to(device)[None, :].expand(draws, -1)
        with autocast(device, precision):
            loss = process.loss(model, copies, generator)
        return loss.nelbo_sum / draws, loss.num_tokens // draws

    return score_rows(model, rows, score_row, byte_lengths, progress, draws, exact)


@torch.no_grad()
def left_to_right_likelihood(pipe, rows: Iterable[torch.Tensor], progress=None) -> Likelihood:
    """The exact NLL of ``pipe``'s model writing each row (1-D token ids, PAD allowed) one token per step from
    the left (module notes); an autoregressive model's own NLL. ``progress`` is advanced once per row."""
    check_left_to_right(pipe.process.name)
    scorer = Scorer(pipe, estimator="left_to_right")

    def score_row(row: torch.Tensor) -> tuple[float, int]:
        tokens = row[row != pipe.tokenizer.pad_id].tolist()
        return (-scorer.score([([], tokens)], batch_size=1)[0][0], len(tokens)) if tokens else (0.0, 0)

    return score_rows(pipe.model, rows, score_row, pipe.tokenizer.byte_lengths(), progress, draws=1, exact=True)


def check_left_to_right(process: str) -> None:
    """A one-line error for a process whose models have no left-to-right likelihood (score entropy)."""
    if process not in SCORED_PROCESSES:
        raise DDLMError(f"the left-to-right likelihood is for autoregressive, masked and block models, not "
                        f"{process!r}; evaluate it with --metrics likelihood")


def score_rows(model: torch.nn.Module, rows: Iterable[torch.Tensor], score_row: Callable[[torch.Tensor], tuple[float, int]],
               byte_lengths: list[int], progress, draws: int, exact: bool) -> Likelihood:
    """Summarise ``score_row`` (a row's nats and scored tokens) over ``rows`` with the model in eval mode."""
    bytes_per_id = torch.tensor(byte_lengths, dtype=torch.long)
    per_row, total_nats, total_tokens, total_bytes = [], 0.0, 0, 0
    was_training = model.training
    model.eval()
    for row in rows:
        row_nats, row_tokens = score_row(row)
        if row_tokens:
            per_row.append(row_nats / row_tokens)
            total_nats += row_nats
            total_tokens += row_tokens
            total_bytes += int(bytes_per_id[row.cpu()].sum())  # special ids (PAD, EOS) count 0 bytes
        if progress is not None:
            progress()
    model.train(was_training)
    return summarise(per_row, total_nats, total_tokens, total_bytes, draws, exact)


def summarise(per_row: list[float], total_nats: float, total_tokens: int, total_bytes: int, draws: int,
              exact: bool) -> Likelihood:
    """The figures of a scored text from each row's nats per token and the totals."""
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
