"""Small policies the masked sampler composes: block schedule, confidence scores, reveal counts, remasking.

Formulas from docs/math.md (LLaDA semi-autoregressive decoding, Fast-dLLM thresholds,
ReMDM remasking).
"""

from __future__ import annotations

import torch

from ddlm.errors import DDLMError
from ddlm.samplers.canvas import Canvas

TIME_POLICIES = ("ancestral", "first-hitting")
RANKED_POLICIES = ("confidence", "margin", "entropy", "random", "left-to-right")
POLICIES = (*TIME_POLICIES, *RANKED_POLICIES, "threshold")
REMASK_SCHEDULES = ("cap", "rescale")
DEFAULT_THRESHOLD = 0.9
# Scores closer than this rank as ties: far above float64 rounding (1e-16 of scores of order 1), below
# the differences float32 logits can express.
SCORE_RESOLUTION = 2.0**-32


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one, the larger ones first."""
    base, remainder = divmod(total, parts)
    return [base + (index < remainder) for index in range(parts)]


def reveal_counts(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) tokens to reveal per step: each row's ``masked`` (B,) count split evenly, remainder first."""
    base = torch.div(masked, steps, rounding_mode="floor")[:, None]
    step_index = torch.arange(steps, device=masked.device)[None, :]
    return base + (step_index < (masked % steps)[:, None]).long()


def blocks(canvas: Canvas, block_length: int | None) -> list[torch.Tensor]:
    """(B, L) bool masks of the generated positions of each block, left to right.

    Block b holds every row's generated positions ranked [b * block_length, (b + 1) * block_length).
    """
    if block_length is None:
        return [canvas.generated]
    if block_length < 1:
        raise DDLMError(f"block_length must be at least 1, got {block_length}", field="block_length")
    counts = canvas.generated.sum(dim=1)
    if bool((counts % block_length != 0).any()):
        total = int(counts.max())
        divisors = [d for d in range(1, total + 1) if total % d == 0 and 1 < d < total]
        hint = f"such as {', '.join(map(str, divisors[-3:]))}" if divisors else "or leave it unset"
        raise DDLMError(
            f"block length {block_length} does not divide the {total} generated positions; pick a divisor {hint}",
            field="block_length")
    block_of = torch.div(canvas.generated_rank(), block_length, rounding_mode="floor")
    return [canvas.generated & (block_of == b) for b in range(int(counts.max()) // block_length)]


def confidence_scores(policy: str, log_probs: torch.Tensor, tokens: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """How sure the model is of each candidate (higher reveals first).

    ``log_probs`` (N, V) of the model, ``tokens`` (N,) the drawn tokens, ``uniform`` (N,) noise
    for the random policy. confidence: p(token); margin: top-1 minus top-2 probability;
    entropy: minus the entropy of p; random: the uniform noise; left-to-right: one score for all,
    so that :func:`ranking` takes the candidates in reading order.
    """
    if policy == "left-to-right":
        return torch.zeros(tokens.shape, dtype=torch.float64, device=tokens.device)
    probs = log_probs.double().exp()
    if policy in ("confidence", "threshold"):
        return probs.gather(-1, tokens[:, None])[:, 0]
    if policy == "margin":
        top = probs.topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]
    if policy == "entropy":
        return -predictive_entropy(log_probs)
    if policy == "random":
        return uniform
    raise DDLMError(f"unknown confidence policy {policy!r}; choose one of {list(RANKED_POLICIES)}")


def predictive_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats, float64) of each distribution ``log_probs`` (..., V)."""
    log_probs = log_probs.double()
    return -(log_probs.exp() * log_probs.clamp_min(-1e30)).sum(dim=-1)


def ranking(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B, L) each row's positions in order of ``scores``, best candidate first (ties: left first).

    Scores are rounded to multiples of ``SCORE_RESOLUTION`` first, so positions whose scores differ
    by rounding only (every position of an all-MASK canvas, say) tie and go left first: with float64
    logits the order depends neither on the batch a row is in nor on the CPU's vector instructions.
    """
    rounded = (scores / SCORE_RESOLUTION).round()
    return rounded.masked_fill(~candidates, -torch.inf).argsort(dim=1, descending=True, stable=True)


def entropy_bounded_counts(
    order: torch.Tensor, candidates: torch.Tensor, entropy: torch.Tensor, bound: float
) -> torch.Tensor:
    """(B,) EB-sampler's reveal count: the longest run of each row's ``candidates`` (B, L) taken in
    ``order`` (see :func:`ranking`) whose ``entropy`` (B, L), summed less its largest, is at most
    ``bound``; at least one where a row has a candidate. The error proxy grows along the run, so
    the run is a prefix of the ranking."""
    ranked_entropy = entropy.masked_fill(~candidates, 0).gather(1, order)
    error = ranked_entropy.cumsum(dim=1) - ranked_entropy.cummax(dim=1).values
    return ((error <= bound) & candidates.gather(1, order)).sum(dim=1)


def top_k_per_row(order: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: in each row, the first ``k`` (B,) candidates in ``order`` (see :func:`ranking`)."""
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return candidates & (rank < k[:, None])


def remask_probability(schedule: str, eta: float, alpha_t: torch.Tensor, alpha_s: torch.Tensor) -> torch.Tensor:
    """ReMDM's sigma_t: the chance that a visible generated token is masked again on the step t -> s.

    The largest value that keeps the marginals of the forward process is (1 - alpha_s) / alpha_t;
    ``cap`` uses min(eta, that bound), ``rescale`` uses eta times it (eta in [0, 1]).
    """
    bound = torch.where(alpha_t > 0, (1 - alpha_s) / alpha_t.clamp_min(1e-300), torch.inf).clamp(max=1.0)
    if schedule == "cap":
        return bound.clamp(max=eta)
    if schedule == "rescale":
        return eta * bound
    raise DDLMError(f"unknown remasking schedule {schedule!r}; choose one of {list(REMASK_SCHEDULES)}")
