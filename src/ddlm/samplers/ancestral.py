"""The ancestral sampler of masked diffusion, with prediction caching and a trace."""

from __future__ import annotations

import torch

from ddlm.errors import DDLMError
from ddlm.processes.masked import MaskedDiffusion
from ddlm.samplers.categorical import SamplingOptions
from ddlm.samplers.randomness import RowRandom
from ddlm.samplers.trace import SampleOutput, TraceStep


def initial_canvas(prompt: list[int], length: int, batch_size: int, mask_id: int, device: torch.device) -> torch.Tensor:
    """(B, len(prompt) + length) ids: the prompt followed by MASKs."""
    canvas = torch.full((batch_size, len(prompt) + length), mask_id, dtype=torch.long, device=device)
    canvas[:, : len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=device)
    return canvas


@torch.no_grad()
def ancestral_sample(
    model: torch.nn.Module,
    process: MaskedDiffusion,
    *,
    batch_size: int,
    length: int,
    steps: int,
    prompt: list[int] | None = None,
    options: SamplingOptions = SamplingOptions(),
    seed: int = 0,
    use_cache: bool = True,
    trace: bool = False,
) -> SampleOutput:
    """Reverse the masking process from t = 1 to t = 0 in ``steps`` equal steps.

    At each step from t to s every masked position is revealed with probability
    (alpha_s - alpha_t) / (1 - alpha_t), its token drawn from p(x0 | x_t); the last
    step reveals every position. The prompt is never changed. With ``use_cache`` and a
    model that does not see t, a step that revealed nothing reuses the last prediction:
    fewer model calls, the same samples for the same seed. Sample i depends only on
    (seed, i), not on how many samples are drawn with it.
    """
    if steps < 1:
        raise DDLMError(f"steps must be at least 1, got {steps}")
    device = next(model.parameters()).device
    prompt = prompt or []
    x = initial_canvas(prompt, length, batch_size, process.mask_id, device)
    random = RowRandom(seed, batch_size, device)
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    cache_allowed = use_cache and not model.config.time_conditioning
    logits, calls, steps_trace = None, 0, []
    for step in range(steps):
        t, s = times[step], times[step + 1]
        if logits is None or not cache_allowed:
            t_batch = torch.full((batch_size,), float(t), device=device)
            logits = model(x, process.model_noise(model, t_batch))
            calls += 1
        masked = x == process.mask_id
        if step == steps - 1:
            reveal = masked
        else:
            reveal = masked & (random.uniform(x.shape[1]) < process.reveal_probability(t, s))
        if reveal.any():
            rows = reveal.nonzero()[:, 0]
            x[reveal] = random.categorical(process.log_probs(logits[reveal]), rows, options)
            logits = None
        if trace:
            steps_trace.append(TraceStep(step=step, time=float(s), tokens=x.clone(), changed=reveal))
    return SampleOutput(tokens=x, model_calls=calls, trace=steps_trace)
