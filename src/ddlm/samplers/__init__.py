"""Samplers as streams of steps, and the policies they share.

``SAMPLERS`` maps a process name to its step generator; every generator takes the model,
the process, a :class:`Canvas`, a :class:`SamplerOptions` and the index of the batch's
first sample, and yields one :class:`SamplerStep` per change of the canvas.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import torch

from ddlm.errors import DDLMError
from ddlm.samplers.autoregressive import ar_steps
from ddlm.samplers.block import block_steps
from ddlm.samplers.canvas import Canvas, parse_template
from ddlm.samplers.categorical import filter_logits, sample_categorical
from ddlm.samplers.masked import masked_steps
from ddlm.samplers.options import SamplerOptions
from ddlm.samplers.policies import POLICIES
from ddlm.samplers.sedd import sedd_steps
from ddlm.samplers.step import SampleOutput, SamplerStep, changes_only, last_steps

SAMPLERS: dict[str, Callable[..., Iterator[SamplerStep]]] = {
    "masked": masked_steps,
    "ar": ar_steps,
    "sedd-absorb": sedd_steps,
    "sedd-uniform": sedd_steps,
    "block": block_steps,
}


def sampler_steps(
    model: torch.nn.Module, process, canvas: Canvas, options: SamplerOptions, first_row: int = 0
) -> Iterator[SamplerStep]:
    """The steps of the sampler registered for ``process.name`` (a seed is drawn when ``options`` has none)."""
    if process.name not in SAMPLERS:
        raise DDLMError(f"no sampler for process {process.name!r}; known: {sorted(SAMPLERS)}")
    options.check_process(process.name)
    return SAMPLERS[process.name](model, process, canvas, options.with_seed(), first_row)


def run_sampler(
    model: torch.nn.Module, process, canvas: Canvas, options: SamplerOptions, first_row: int = 0
) -> SampleOutput:
    """Drain :func:`sampler_steps`: the final tokens, the model calls and the seed used."""
    options = options.with_seed()
    last = deque(sampler_steps(model, process, canvas, options, first_row), maxlen=1)[0]
    return SampleOutput(tokens=last.tokens, model_calls=last.model_calls, canvas=canvas, seed=options.seed)


__all__ = [
    "POLICIES", "SAMPLERS", "Canvas", "SampleOutput", "SamplerOptions", "SamplerStep", "ar_steps", "block_steps",
    "changes_only", "filter_logits", "last_steps", "masked_steps", "parse_template", "run_sampler",
    "sample_categorical", "sampler_steps", "sedd_steps",
]
