"""Samplers for score-entropy diffusion: Euler or analytic reverse steps, then a final denoising step, as a stream."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ddlm.processes.sedd import ScoreEntropyDiffusion
from ddlm.samplers.canvas import Canvas
from ddlm.samplers.options import SamplerOptions
from ddlm.samplers.randomness import RowRandom
from ddlm.samplers.step import SamplerStep, masked_fraction

# The SamplerOptions fields this sampler reads besides the common ones (see ddlm.families).
SEDD_OPTIONS = ("method",)


def step_log_probs(probs: torch.Tensor) -> torch.Tensor:
    """float64 log-probabilities of a reverse step: negative entries clipped to 0, rows renormalised."""
    probs = probs.double().clamp_min(0)
    return (probs / probs.sum(-1, keepdim=True)).log()


def reverse_step(
    process: ScoreEntropyDiffusion,
    logits: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    method: str,
    final: bool,
) -> torch.Tensor:
    """(P, V) step probabilities from time t to s for the movable positions ``xt`` (P,).

    The ``final`` step is the analytic step to sigma_bar = 0, which removes all noise.
    """
    sigma_bar_t = float(process.sigma_bar(t))
    log_score = process.log_score(logits, xt, torch.tensor(sigma_bar_t))
    if final:
        return process.analytic_step(log_score, xt, sigma_bar_t, 0.0)
    if method == "euler":
        return process.euler_step(log_score, xt, float(process.sigma(t) * (t - s)))
    return process.analytic_step(log_score, xt, sigma_bar_t, float(process.sigma_bar(s)))


@torch.no_grad()
def sedd_steps(
    model: torch.nn.Module, process: ScoreEntropyDiffusion, canvas: Canvas, options: SamplerOptions, first_row: int = 0
) -> Iterator[SamplerStep]:
    """Reverse the SEDD process from t = 1 to t = 0 in ``options.steps`` equal steps, one yielded step each.

    Starts from the prior (all MASK for the absorbing graph, uniform real tokens for the
    uniform one). Each step but the last is an Euler step (reverse rate x -> y equal to
    sigma(t) Q(y -> x) s_y, times dt) or the analytic Tweedie tau-leaping step
    (``options.method``); the last is the analytic step to zero noise, after which no MASK
    remains. Only the canvas's generated positions move: the prompt, infill context and
    suffix are re-imposed at every step by never being moved, and batch padding is hidden
    from attention. Negative step probabilities (learned scores, large steps) are clipped
    and rows renormalised; temperature, top-k and top-p apply to these step distributions.
    ``use_cache`` is ignored: the model sees the noise level, so every step needs a fresh
    prediction (a step with nothing movable skips the model). Sample i depends only on
    (seed, first_row + i), not on the batch size.
    """
    device = next(model.parameters()).device
    batch_size, steps = canvas.batch_size, options.steps
    random = RowRandom(options.seed, canvas.active.to(device), first_row)
    movable = canvas.generated.to(device)
    x = torch.where(movable, process.draw_prior(random.positional()), canvas.tokens.to(device))
    key_mask = canvas.key_mask.to(device) if canvas.key_mask is not None else None
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    calls = 0
    for step in range(steps):
        t, s = times[step], times[step + 1]
        active = movable & process.can_move(x)
        previous = x.clone()
        confidence = torch.full(x.shape, torch.nan, device=device)  # probability of each drawn step
        if active.any():
            t_batch = torch.full((batch_size,), float(t), dtype=torch.float64, device=device)
            logits = model(x, process.model_noise(t_batch), key_mask=key_mask)
            calls += 1
            probs = reverse_step(process, logits[active], x[active], t, s, options.method, final=step == steps - 1)
            log_probs = step_log_probs(probs)
            x[active] = random.categorical(log_probs, active.nonzero()[:, 0], options)
            confidence[active] = log_probs.gather(-1, x[active][:, None])[:, 0].exp().float()
        sigma_bar_s = 0.0 if step == steps - 1 else float(process.sigma_bar(s))  # the last step removes all noise
        yield SamplerStep(step, x.clone(), x != previous, torch.zeros_like(movable), confidence,
                          noise_level(process, x, movable, sigma_bar_s), calls)


def noise_level(process: ScoreEntropyDiffusion, x: torch.Tensor, movable: torch.Tensor, sigma_bar: float) -> float:
    """The step's noise (see SamplerStep): the masked fraction, or for the uniform graph 1 - exp(-sigma_bar)."""
    if process.name == "sedd-uniform":
        return -math.expm1(-sigma_bar)
    return float(masked_fraction(x, movable, process.mask_id).mean())
