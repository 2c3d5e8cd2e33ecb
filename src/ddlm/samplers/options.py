"""SamplerOptions: every setting of one sampling run, declared and validated here and nowhere else.

The CLI, ``ddlm eval``, the benchmarks, the pipeline, the API and the web app build one
:class:`SamplerOptions` and pass it whole down to the sampler. Each option is declared once with
:func:`ddlm.schema.option` (help text, range, choices): the command-line flags, the API's request
body and the web page's controls are generated from these declarations. Which options a model
takes follows from its method family (:mod:`ddlm.families`): a family names the options its
sampler reads, and options of families registered outside ddlm travel in ``extra``.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import Any

from ddlm.errors import DDLMError
from ddlm.samplers.policies import POLICIES, RANKED_POLICIES, REMASK_SCHEDULES
from ddlm.schema import check_fields, option

SEDD_METHODS = ("euler", "analytic")
SEED_LIMIT = 2**63


@dataclass(frozen=True)
class SamplerOptions:
    """How to sample: the step budget, how each token is drawn, the seed, and the families' own options.

    ``seed``: samples depend only on (seed, sample index); None draws a fresh one (see
    :meth:`with_seed`). The masked policies are described in ``ddlm.samplers.masked``.
    ``extra``: values of options declared by families registered outside ddlm (by name).
    """

    steps: int = option(128, "denoising steps (masked: split over blocks; first-hitting ignores it; the "
                             "autoregressive model takes one per token)", low=1)
    temperature: float = option(1.0, "0 always draws the most likely token", low=0, slider_max=2, slider_step=0.05)
    top_k: int | None = option(None, "draw among the k most likely tokens", low=1, off=0)
    top_p: float | None = option(None, "draw among the most likely tokens holding this much probability", low=0,
                                 high=1, low_open=True, off=1, slider_step=0.05)
    seed: int | None = option(None, "samples depend only on the seed and their index; unset: a fresh one, reported "
                                    "with the samples", low=0, high=SEED_LIMIT, high_open=True)
    use_cache: bool = option(True, "skip model calls that would repeat the last one", flag="--no-cache")
    policy: str = option("ancestral", "which masked positions each step reveals", choices=POLICIES)
    block_length: int | None = option(None, "write semi-autoregressive blocks of this many positions, left to right "
                                            "(a sampling choice, unlike a block model's trained block_size)",
                                      low=1, off=0)
    threshold: float | None = option(None, "also reveal every position the model is this sure of (a ranked "
                                           "policy; the threshold policy: 0.9)", low=0, high=1, low_open=True, off=0,
                                     slider_step=0.05)
    entropy_bound: float | None = option(None, "EB-sampler (a ranked policy): also reveal the best-ranked positions "
                                               "whose entropies, summed less the largest, stay within this many nats",
                                         low=0, off=0, slider_max=20, slider_step=0.5)
    remask: str | None = option(None, "ReMDM: let the model mask written tokens again, on this schedule "
                                      "(ancestral policy)", choices=REMASK_SCHEDULES, off="off")
    remask_eta: float = option(0.05, "ReMDM remasking strength", low=0, high=1, slider_step=0.01)
    prefix_cache: bool = option(False, "reuse keys and values left of the current block")
    dual_cache: bool = option(False, "reuse keys and values left and right of the current block (needs block_length)")
    min_length: int = option(0, "no end-of-text among the first this many generated tokens", low=0)
    method: str = option("analytic", "SEDD's reverse step", choices=SEDD_METHODS)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)
        ranked = (*RANKED_POLICIES, "threshold")
        if self.threshold is not None and self.policy not in ranked:
            raise DDLMError(f"a threshold needs a ranked policy (threshold, confidence, ...), not {self.policy!r}",
                            field="threshold")
        if self.entropy_bound is not None and self.policy not in ranked:
            raise DDLMError(f"an entropy bound ranks positions, so it needs a ranked policy, not {self.policy!r}; "
                            "set policy to confidence", field="entropy_bound")
        if self.dual_cache and self.block_length is None:
            raise DDLMError("the dual cache keeps the positions right of the current block: set block_length too",
                            field="dual_cache")
        if self.remask is not None and self.policy != "ancestral":
            raise DDLMError(f"remasking works with the ancestral policy, not {self.policy!r}; drop remask or set "
                            "policy to ancestral", field="remask")

    @classmethod
    def build(cls, options: SamplerOptions | None = None, **keywords: Any) -> SamplerOptions:
        """``options`` (or the defaults) with ``keywords`` replacing fields.

        A name that is no field goes to ``extra``: whether the model's family takes it is checked
        where the family is known (:meth:`ddlm.families.Family.check`).
        """
        base = options or cls()
        known = {item.name for item in dataclasses.fields(cls)} - {"extra"}
        extra = {name: value for name, value in keywords.items() if name not in known}
        fields = {name: value for name, value in keywords.items() if name in known}
        return dataclasses.replace(base, **fields, extra={**base.extra, **extra})

    def with_seed(self) -> SamplerOptions:
        """These options with a seed: the given one, or one drawn from the OS (the global RNG is not touched)."""
        return self if self.seed is not None else dataclasses.replace(self, seed=secrets.randbelow(SEED_LIMIT))

    def to_dict(self) -> dict[str, Any]:
        """Every option by name (the families' own ones included), JSON-ready."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "extra"}
        return {**values, **self.extra}
