"""Processes: forward corruption, per-token NELBO, reverse-step distribution.

Each process registers a builder here under the names users type (``process.name=...``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ddlm.errors import DDLMError
from ddlm.processes.autoregressive import Autoregressive
from ddlm.processes.base import LossOutput, Process, Vocabulary
from ddlm.processes.block import BlockDiffusion
from ddlm.processes.masked import MaskedDiffusion
from ddlm.processes.schedules import SCHEDULES, Schedule, build_schedule
from ddlm.processes.sedd import ScoreEntropyDiffusion

PROCESS_BUILDERS: dict[str, Callable[[dict[str, Any], Vocabulary], Process]] = {
    "masked": MaskedDiffusion.from_config,
    "ar": Autoregressive.from_config,
    "sedd-absorb": ScoreEntropyDiffusion.from_config,
    "sedd-uniform": ScoreEntropyDiffusion.from_config,
    "block": BlockDiffusion.from_config,
}


def build_process(config: dict[str, Any], vocab: Vocabulary) -> Process:
    """The process described by ``config`` (as written by ``process.to_dict()``)."""
    name = config.get("name", "masked")
    if name not in PROCESS_BUILDERS:
        raise DDLMError(f"unknown process {name!r}; choose one of {sorted(PROCESS_BUILDERS)}")
    return PROCESS_BUILDERS[name](config, vocab)


__all__ = [
    "Autoregressive", "BlockDiffusion", "LossOutput", "MaskedDiffusion", "PROCESS_BUILDERS", "Process", "SCHEDULES",
    "Schedule", "Vocabulary", "build_process", "build_schedule",
]
