"""SamplerOptions: every setting of one sampling run, validated here and nowhere else.

The CLI, ``ddlm eval``, the benchmarks, the pipeline and the web app build one
:class:`SamplerOptions` and pass it whole down to the sampler. Options that belong to one
family of processes (the masked-diffusion policies, SEDD's step method) say so in their
field's metadata; :meth:`SamplerOptions.check_process` refuses them for another family.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from ddlm.errors import DDLMError
from ddlm.samplers.policies import POLICIES, RANKED_POLICIES, REMASK_SCHEDULES

MASKED_PROCESSES = ("masked",)
MASK_POLICY_PROCESSES = ("masked", "block")  # block diffusion runs the masked policies inside each block
SEDD_PROCESSES = ("sedd-absorb", "sedd-uniform")
SEDD_METHODS = ("euler", "analytic")
SEED_LIMIT = 2**63


def only_for(processes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Field metadata: the option applies to these processes only."""
    return {"processes": processes}


@dataclass(frozen=True)
class SamplerOptions:
    """How to sample: the step budget, how each token is drawn, the seed, and the process's own options.

    ``steps``: the step budget (masked: split over blocks; first-hitting ignores it; the
    autoregressive model takes one step per token). ``temperature`` 0 is argmax; ``top_k`` /
    ``top_p`` filter each token's distribution. ``seed``: samples depend only on (seed,
    sample index); None draws a fresh one (see :meth:`with_seed`). ``use_cache``: skip model
    calls that would repeat the last one. Masked diffusion: ``policy`` (see
    ``ddlm.samplers.masked``), ``block_length`` (semi-autoregressive blocks), ``threshold``
    (Fast-dLLM; 0.9 for the threshold policy), ``entropy_bound`` (EB-sampler: each step also
    reveals the best-ranked positions whose summed entropy, less the largest, stays within the
    bound), ``remask`` / ``remask_eta`` (ReMDM, ancestral policy), ``prefix_cache`` (reuse
    keys/values left of the current block), ``dual_cache`` (also those right of it, Fast-dLLM),
    ``min_length`` (no end-of-text among the first generated positions). SEDD: ``method``
    (euler, analytic).
    """

    steps: int = 128
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    use_cache: bool = True
    policy: str = field(default="ancestral", metadata=only_for(MASK_POLICY_PROCESSES))
    block_length: int | None = field(default=None, metadata=only_for(MASKED_PROCESSES))
    threshold: float | None = field(default=None, metadata=only_for(MASK_POLICY_PROCESSES))
    entropy_bound: float | None = field(default=None, metadata=only_for(MASK_POLICY_PROCESSES))
    remask: str | None = field(default=None, metadata=only_for(MASK_POLICY_PROCESSES))
    remask_eta: float = field(default=0.05, metadata=only_for(MASK_POLICY_PROCESSES))
    prefix_cache: bool = field(default=False, metadata=only_for(MASKED_PROCESSES))
    dual_cache: bool = field(default=False, metadata=only_for(MASKED_PROCESSES))
    min_length: int = field(default=0, metadata=only_for(MASK_POLICY_PROCESSES))
    method: str = field(default="analytic", metadata=only_for(SEDD_PROCESSES))

    def __post_init__(self) -> None:
        check_integer("steps", self.steps, minimum=1)
        check_number("temperature", self.temperature, "a finite number >= 0 (0 samples greedily)", lambda t: t >= 0)
        if self.top_k is not None:
            check_integer("top_k", self.top_k, minimum=1)
        if self.top_p is not None:
            check_number("top_p", self.top_p, "in (0, 1]", lambda p: 0 < p <= 1)
        if self.seed is not None:
            check_integer("seed", self.seed, minimum=0)
            if self.seed >= SEED_LIMIT:
                raise DDLMError(f"seed must be below 2**63, got {self.seed}; pick a smaller seed")
        check_choice("policy", self.policy, POLICIES)
        if self.block_length is not None:
            check_integer("block_length", self.block_length, minimum=1)
        if self.threshold is not None:
            check_number("threshold", self.threshold, "in (0, 1] (a probability)", lambda p: 0 < p <= 1)
            if self.policy not in (*RANKED_POLICIES, "threshold"):
                raise DDLMError(f"a threshold needs a ranked policy (threshold, confidence, ...), not {self.policy!r}")
        if self.entropy_bound is not None:
            check_number("entropy_bound", self.entropy_bound, "a finite number >= 0 (nats)", lambda g: g >= 0)
            if self.policy not in (*RANKED_POLICIES, "threshold"):
                raise DDLMError(
                    f"an entropy bound ranks positions, so it needs a ranked policy, not {self.policy!r}; "
                    "add policy=confidence (--policy confidence)"
                )
        if self.dual_cache and self.block_length is None:
            raise DDLMError("the dual cache keeps the positions right of the current block: set block_length too")
        if self.remask is not None:
            check_choice("remask", self.remask, REMASK_SCHEDULES)
            if self.policy != "ancestral":
                raise DDLMError(
                    f"remasking works with the ancestral policy, not {self.policy!r}; drop remask or use policy=ancestral"
                )
        check_number("remask_eta", self.remask_eta, "in [0, 1]", lambda eta: 0 <= eta <= 1)
        check_integer("min_length", self.min_length, minimum=0)
        check_choice("method", self.method, SEDD_METHODS)

    @classmethod
    def build(cls, options: SamplerOptions | None = None, **keywords: Any) -> SamplerOptions:
        """``options`` (or the defaults) with ``keywords`` replacing fields; an unknown name is a DDLMError."""
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise DDLMError(f"unknown sampler option {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
        return dataclasses.replace(options or cls(), **keywords)

    def with_seed(self) -> SamplerOptions:
        """These options with a seed: the given one, or one drawn from the OS (the global RNG is not touched)."""
        return self if self.seed is not None else dataclasses.replace(self, seed=secrets.randbelow(SEED_LIMIT))

    def check_process(self, process_name: str) -> None:
        """Refuse an option that was changed from its default but does not apply to ``process_name``."""
        foreign = [item.name for item in self.foreign_fields(process_name) if getattr(self, item.name) != item.default]
        if foreign:
            raise DDLMError(
                f"the {process_name} sampler has no option {', '.join(foreign)}; drop it for this model"
            )

    def for_process(self, process_name: str) -> SamplerOptions:
        """These options with those that do not apply to ``process_name`` reset to their defaults."""
        return dataclasses.replace(self, **{item.name: item.default for item in self.foreign_fields(process_name)})

    def applicable(self, process_name: str) -> dict[str, Any]:
        """The options that apply to ``process_name``, as a JSON-ready dict (for reports)."""
        foreign = {item.name for item in self.foreign_fields(process_name)}
        return {name: value for name, value in dataclasses.asdict(self).items() if name not in foreign}

    def foreign_fields(self, process_name: str) -> list[dataclasses.Field]:
        return [item for item in dataclasses.fields(self)
                if process_name not in item.metadata.get("processes", (process_name,))]


def check_integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DDLMError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise DDLMError(f"{name} must be at least {minimum}, got {value}")


def check_number(name: str, value: Any, rule: str, valid) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DDLMError(f"{name} must be a number {rule}, got {value!r}")
    if not math.isfinite(value) or not valid(value):
        raise DDLMError(f"{name} must be {rule}, got {value}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        what = "sampling policy" if name == "policy" else name
        raise DDLMError(f"unknown {what} {value!r}; choose one of {list(choices)}")
