"""Generation loops and the policies they share.

``SAMPLERS`` maps a process name to its generation loop; every loop takes the model, the
process and the keyword arguments of :func:`run_sampler` and returns a SampleOutput.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ddlm.errors import DDLMError
from ddlm.samplers.ancestral import ancestral_sample
from ddlm.samplers.autoregressive import ar_sample
from ddlm.samplers.categorical import SamplingOptions, filter_logits, sample_categorical
from ddlm.samplers.sedd import sedd_sample
from ddlm.samplers.trace import SampleOutput, TraceStep

SAMPLERS: dict[str, Callable[..., SampleOutput]] = {
    "masked": ancestral_sample,
    "ar": ar_sample,
    "sedd-absorb": sedd_sample,
    "sedd-uniform": sedd_sample,
}


def run_sampler(model: torch.nn.Module, process: Any, **options: Any) -> SampleOutput:
    """Generate with the sampler registered for ``process.name``.

    Common options: batch_size, length, steps, prompt (token ids), options (SamplingOptions),
    seed, use_cache, trace; a sampler may accept more (e.g. ``method``).
    """
    if process.name not in SAMPLERS:
        raise DDLMError(f"no sampler for process {process.name!r}; known: {sorted(SAMPLERS)}")
    sampler = SAMPLERS[process.name]
    accepted = inspect.signature(sampler).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DDLMError(f"the {process.name} sampler has no option {', '.join(unknown)}; drop it for this model")
    return sampler(model, process, **options)


__all__ = [
    "SAMPLERS", "SampleOutput", "SamplingOptions", "TraceStep", "ancestral_sample", "ar_sample", "filter_logits",
    "run_sampler", "sample_categorical",
]
