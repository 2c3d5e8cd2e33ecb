"""Samplers for score-entropy diffusion: Euler or analytic reverse steps, then a final denoising step."""

from __future__ import annotations

import torch

from ddlm.errors import DDLMError
from ddlm.processes.sedd import ScoreEntropyDiffusion
from ddlm.samplers.canvas import Canvas
from ddlm.samplers.categorical import SamplingOptions
from ddlm.samplers.randomness import RowRandom
from ddlm.samplers.trace import SampleOutput, TraceStep

METHODS = ("euler", "analytic")


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
def sedd_sample(
    model: torch.nn.Module,
    process: ScoreEntropyDiffusion,
    *,
    canvas: Canvas,
    steps: int,
    options: SamplingOptions = SamplingOptions(),
    seed: int = 0,
    use_cache: bool = True,
    trace: bool = False,
    method: str = "analytic",
) -> SampleOutput:
    """Reverse the SEDD process from t = 1 to t = 0 in ``steps`` equal steps.

    Starts from the prior (all MASK for the absorbing graph, uniform real tokens for the
    uniform one). Each step but the last is an Euler step (reverse rate x -> y equal to
    sigma(t) Q(y -> x) s_y, times dt) or the analytic Tweedie tau-leaping step (``method``);
    the last is the analytic step to zero noise, after which no MASK remains. Only the
    canvas's generated positions move: the prompt, infill context and suffix are re-imposed
    at every step by never being moved, and batch padding is hidden from attention. Negative
    step probabilities (learned scores, large steps) are clipped and rows renormalised;
    options (temperature, top-k, top-p) apply to these step distributions. ``use_cache`` is
    accepted for a uniform interface and ignored: the model sees the noise level, so every
    step needs a fresh prediction (a step with nothing movable skips the model). Sample i
    depends only on (seed, i), not on the batch size.
    """
    if steps < 1:
        raise DDLMError(f"steps must be at least 1, got {steps}")
    if method not in METHODS:
        raise DDLMError(f"unknown SEDD sampling method {method!r}; choose one of {list(METHODS)}")
    device = next(model.parameters()).device
    batch_size = canvas.batch_size
    random = RowRandom(seed, batch_size, device)
    free = canvas.generated.to(device)
    x = torch.where(free, process.draw_prior(random.uniform(canvas.width)), canvas.tokens.to(device))
    key_mask = canvas.key_mask.to(device) if canvas.key_mask is not None else None
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    calls, steps_trace = 0, []
    for step in range(steps):
        t, s = times[step], times[step + 1]
        active = free & process.can_move(x)
        previous = x.clone()
        if active.any():
            t_batch = torch.full((batch_size,), float(t), dtype=torch.float64, device=device)
            logits = model(x, process.model_noise(model, t_batch), key_mask=key_mask)
            calls += 1
            probs = reverse_step(process, logits[active], x[active], t, s, method, final=step == steps - 1)
            log_probs = step_log_probs(probs)
            x[active] = random.categorical(log_probs, active.nonzero()[:, 0], options)
        if trace:
            confidence = torch.full(x.shape, torch.nan, device=device)  # probability of each drawn step
            if active.any():
                confidence[active] = log_probs.gather(-1, x[active][:, None])[:, 0].exp().float()
            steps_trace.append(TraceStep(step, float(s), x.clone(), x != previous, confidence))
    return SampleOutput(tokens=x, model_calls=calls, trace=steps_trace)
