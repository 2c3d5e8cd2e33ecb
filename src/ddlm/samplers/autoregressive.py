"""Left-to-right sampling for the autoregressive baseline, with a KV cache and a trace."""

from __future__ import annotations

import torch

from ddlm.errors import DDLMError
from ddlm.processes.autoregressive import Autoregressive
from ddlm.samplers.canvas import Canvas
from ddlm.samplers.categorical import SamplingOptions
from ddlm.samplers.randomness import RowRandom
from ddlm.samplers.trace import SampleOutput, TraceStep


@torch.no_grad()
def ar_sample(
    model: torch.nn.Module,
    process: Autoregressive,
    *,
    canvas: Canvas,
    steps: int | None = None,
    options: SamplingOptions = SamplingOptions(),
    seed: int = 0,
    use_cache: bool = True,
    trace: bool = False,
) -> SampleOutput:
    """Fill the canvas left to right after its prompt, one model call per token.

    The canvas must be prompt + positions to generate, with one prompt length for the whole
    batch (prompts may differ). The model reads ``[eos] + prompt`` and then each new token. With ``use_cache`` it sees
    only the new positions (keys and values of the others come from its KV cache), else
    the whole prefix at every step; both give the same samples. ``steps`` is ignored (it
    is accepted so that every sampler takes the same options). The trace shows the
    canvas as a diffusion trace does: not-yet-generated positions hold MASK. Sample i
    depends only on (seed, i), not on how many samples are drawn with it.
    """
    prompt_length = canvas.prefix_length()
    if prompt_length is None:
        raise DDLMError(
            "the autoregressive model writes left to right: it needs prompts of one length and no infill "
            "or suffix; use a diffusion model for infilling"
        )
    device = next(model.parameters()).device
    batch_size, length = canvas.batch_size, canvas.width - prompt_length
    start_token = torch.full((batch_size, 1), process.eos_id, dtype=torch.long)
    given = canvas.tokens.cpu().masked_fill(canvas.generated.cpu(), process.mask_id)
    x = torch.cat((start_token, given), dim=1).to(device)
    random = RowRandom(seed, batch_size, device)
    rows = torch.arange(batch_size, device=device)
    noise = process.model_noise(model, batch_size, device)
    cache = model.new_cache(batch_size) if use_cache else None
    steps_trace = []
    first = 1 + prompt_length
    for step in range(length):
        position = first + step
        start = cache.length if cache is not None else 0
        logits = model(x[:, start:position], noise, cache=cache)[:, -1]
        log_probs = process.log_probs(logits)
        x[:, position] = random.categorical(log_probs, rows, options)
        if trace:
            changed = torch.zeros_like(x[:, 1:], dtype=torch.bool)
            changed[:, position - 1] = True
            confidence = torch.full(changed.shape, torch.nan, device=device)
            confidence[:, position - 1] = log_probs.gather(-1, x[:, position, None])[:, 0].exp()
            time = 1 - (step + 1) / length  # fraction still to generate, as diffusion time runs 1 -> 0
            steps_trace.append(TraceStep(step, time, x[:, 1:].clone(), changed, confidence))
    return SampleOutput(tokens=x[:, 1:].contiguous(), model_calls=length, trace=steps_trace)
