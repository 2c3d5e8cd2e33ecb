"""Generation loops and the policies they share."""

from ddlm.samplers.ancestral import ancestral_sample
from ddlm.samplers.categorical import SamplingOptions, filter_logits, sample_categorical
from ddlm.samplers.trace import SampleOutput, TraceStep

__all__ = ["SampleOutput", "SamplingOptions", "TraceStep", "ancestral_sample", "filter_logits", "sample_categorical"]
