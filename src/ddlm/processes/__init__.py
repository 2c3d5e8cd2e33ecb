"""Diffusion processes: forward corruption, per-token NELBO, reverse-step distribution."""

from __future__ import annotations

from typing import Any

from ddlm.errors import DDLMError
from ddlm.processes.base import LossOutput
from ddlm.processes.masked import MaskedDiffusion
from ddlm.processes.schedules import SCHEDULES, Schedule, build_schedule

PROCESSES = ("masked",)


def build_process(config: dict[str, Any], mask_id: int, pad_id: int) -> MaskedDiffusion:
    """The process described by ``config`` (as written by ``process.to_dict()``)."""
    name = config.get("name", "masked")
    if name not in PROCESSES:
        raise DDLMError(f"unknown process {name!r}; choose one of {list(PROCESSES)}")
    schedule_config = dict(config.get("schedule", {"name": "linear"}))
    schedule = build_schedule(schedule_config.pop("name"), **schedule_config)
    return MaskedDiffusion(
        schedule, mask_id=mask_id, pad_id=pad_id,
        eps=config.get("eps", 1e-3), antithetic=config.get("antithetic", True),
    )


__all__ = ["LossOutput", "MaskedDiffusion", "SCHEDULES", "Schedule", "build_process", "build_schedule"]
