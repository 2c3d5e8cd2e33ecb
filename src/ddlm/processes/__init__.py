"""Processes: forward corruption, per-token NELBO, reverse-step distribution.

Each process is registered with its sampler as a method family in :mod:`ddlm.families`, under
the names users type (``process.name=...``).
"""

from __future__ import annotations

from ddlm.processes.autoregressive import Autoregressive
from ddlm.processes.base import LossOutput, Process, Vocabulary
from ddlm.processes.block import BlockDiffusion
from ddlm.processes.masked import MaskedDiffusion
from ddlm.processes.schedules import SCHEDULES, Schedule, build_schedule
from ddlm.processes.sedd import ScoreEntropyDiffusion

__all__ = [
    "Autoregressive", "BlockDiffusion", "LossOutput", "MaskedDiffusion", "Process", "SCHEDULES", "ScoreEntropyDiffusion",
    "Schedule", "Vocabulary", "build_schedule",
]
