"""Categorical sampling in float64: temperature, top-k, top-p, Gumbel-max.

float32 Gumbel noise is truncated in its tail, which silently lowers the temperature;
every ddlm sampler draws tokens through this module.
"""

from __future__ import annotations

import torch

from ddlm.samplers.options import SamplerOptions


def filter_logits(logits: torch.Tensor, options: SamplerOptions) -> torch.Tensor:
    """float64 logits / temperature with everything outside top-k and top-p set to -inf."""
    logits = logits.double()
    if options.temperature > 0:
        logits = logits / options.temperature
    if options.top_k is not None and options.top_k < logits.shape[-1]:
        kth = logits.topk(options.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if options.top_p is not None and options.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= options.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    return logits


def gumbel_noise(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Standard Gumbel noise in float64."""
    u = torch.rand(shape, dtype=torch.float64, device=device, generator=generator)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))


def sample_categorical(
    logits: torch.Tensor, options: SamplerOptions, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token per row of ``logits`` (..., V), drawn by float64 Gumbel-max."""
    if options.temperature == 0:
        return filter_logits(logits, options).argmax(dim=-1)
    filtered = filter_logits(logits, options)
    return (filtered + gumbel_noise(filtered.shape, filtered.device, generator)).argmax(dim=-1)
