"""Samplers as streams of steps, and the policies they share.

Each family's step generator (``masked_steps``, ``block_steps``, ``sedd_steps``, ``ar_steps``)
takes the model, the process, a :class:`Canvas`, a :class:`SamplerOptions` and the index of the
batch's first sample, and yields one :class:`SamplerStep` per change of the canvas;
:func:`ddlm.families.sampler_steps` picks the one of a process's family.
"""

from __future__ import annotations

from ddlm.samplers.autoregressive import ar_steps
from ddlm.samplers.block import block_steps
from ddlm.samplers.canvas import Canvas, parse_template
from ddlm.samplers.categorical import filter_logits, sample_categorical
from ddlm.samplers.masked import masked_steps
from ddlm.samplers.options import SamplerOptions
from ddlm.samplers.policies import POLICIES
from ddlm.samplers.sedd import sedd_steps
from ddlm.samplers.step import SampleOutput, SamplerStep, changes_only, last_steps

__all__ = [
    "POLICIES", "Canvas", "SampleOutput", "SamplerOptions", "SamplerStep", "ar_steps", "block_steps",
    "changes_only", "filter_logits", "last_steps", "masked_steps", "parse_template", "sample_categorical",
    "sedd_steps",
]
