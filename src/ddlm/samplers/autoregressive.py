"""Left-to-right sampling for the autoregressive baseline, with a KV cache, as a stream of steps."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ddlm.errors import DDLMError
from ddlm.processes.autoregressive import Autoregressive
from ddlm.samplers.canvas import Canvas
from ddlm.samplers.options import SamplerOptions
from ddlm.samplers.randomness import RowRandom
from ddlm.samplers.step import SamplerStep, masked_fraction


def ar_steps(
    model: torch.nn.Module, process: Autoregressive, canvas: Canvas, options: SamplerOptions, first_row: int = 0
) -> Iterator[SamplerStep]:
    """Fill the canvas left to right after its prompt, one model call (and one step) per token.

    The canvas must be prompt + positions to generate, with one prompt length for the whole
    batch (prompts may differ). The model reads ``[eos] + prompt`` and then each new token. With ``use_cache`` it sees
    only the new positions (keys and values of the others come from its KV cache), else
    the whole prefix at every step; both give the same samples. ``options.steps`` is
    ignored. The steps show the canvas as a diffusion sampler's do: not-yet-generated
    positions hold MASK. Sample i depends only on (seed, first_row + i). A canvas with
    infill or a suffix raises here, before the first step.
    """
    prompt_length = canvas.prefix_length()
    if prompt_length is None:
        raise DDLMError(
            "the autoregressive model writes left to right: it needs prompts of one length and no infill "
            "or suffix; use a diffusion model for infilling", field="infill"
        )
    return write_left_to_right(model, process, canvas, options, first_row, prompt_length)


@torch.no_grad()
def write_left_to_right(
    model: torch.nn.Module, process: Autoregressive, canvas: Canvas, options: SamplerOptions, first_row: int,
    prompt_length: int,
) -> Iterator[SamplerStep]:
    """The steps of :func:`ar_steps` for a canvas of prompts of ``prompt_length`` tokens."""
    device = next(model.parameters()).device
    batch_size, length = canvas.batch_size, canvas.width - prompt_length
    start_token = torch.full((batch_size, 1), process.eos_id, dtype=torch.long)
    given = canvas.tokens.cpu().masked_fill(canvas.generated.cpu(), process.mask_id)
    x = torch.cat((start_token, given), dim=1).to(device)
    generated = canvas.generated.to(device)
    random = RowRandom(options.seed, canvas.active.to(device), first_row)
    rows = torch.arange(batch_size, device=device)
    noise = process.model_noise(batch_size, device)
    cache = model.new_cache(batch_size) if options.use_cache else None
    first = 1 + prompt_length
    for step in range(length):
        position = first + step
        start = cache.length if cache is not None else 0
        logits = model(x[:, start:position], noise, cache=cache)[:, -1]
        log_probs = process.log_probs(logits)
        x[:, position] = random.categorical(log_probs, rows, options)
        revealed = torch.zeros_like(generated)
        revealed[:, position - 1] = True
        confidence = torch.full(revealed.shape, torch.nan, device=device)
        confidence[:, position - 1] = log_probs.gather(-1, x[:, position, None])[:, 0].exp()
        tokens = x[:, 1:].clone()
        yield SamplerStep(step, tokens, revealed, torch.zeros_like(revealed), confidence,
                          float(masked_fraction(tokens, generated, process.mask_id).mean()), step + 1)
