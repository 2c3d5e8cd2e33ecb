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
from ddlm.samplers.autoregressive import ar_sample
from ddlm.samplers.canvas import Canvas, parse_template
from ddlm.samplers.categorical import SamplingOptions, filter_logits, sample_categorical
from ddlm.samplers.masked import masked_sample
from ddlm.samplers.policies import POLICIES
from ddlm.samplers.sedd import sedd_sample
from ddlm.samplers.trace import SampleOutput, TraceStep

SAMPLERS: dict[str, Callable[..., SampleOutput]] = {
    "masked": masked_sample,
    "ar": ar_sample,
    "sedd-absorb": sedd_sample,
    "sedd-uniform": sedd_sample,
}


def sampler_options(process: Any) -> set[str]:
    """Names of the keyword options the sampler of ``process`` accepts."""
    if process.name not in SAMPLERS:
        raise DDLMError(f"no sampler for process {process.name!r}; known: {sorted(SAMPLERS)}")
    return set(inspect.signature(SAMPLERS[process.name]).parameters)


def run_sampler(model: torch.nn.Module, process: Any, **options: Any) -> SampleOutput:
    """Generate with the sampler registered for ``process.name``.

    Common options: canvas (a :class:`Canvas`), steps, options (SamplingOptions), seed,
    use_cache, trace; a sampler may accept more (masked: ``policy``, ``block_length``, ...;
    SEDD: ``method``).
    """
    unknown = sorted(set(options) - sampler_options(process))
    if unknown:
        raise DDLMError(f"the {process.name} sampler has no option {', '.join(unknown)}; drop it for this model")
    return SAMPLERS[process.name](model, process, **options)


__all__ = [
    "POLICIES", "SAMPLERS", "Canvas", "SampleOutput", "SamplingOptions", "TraceStep", "ar_sample", "filter_logits",
    "masked_sample", "parse_template", "run_sampler", "sample_categorical", "sampler_options",
]
