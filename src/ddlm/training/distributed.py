"""Data-parallel training under ``torchrun``: the process group and the collectives the trainer uses.

Without torchrun (WORLD_SIZE unset or 1) every method is a cheap no-op, so the trainer has
one code path. Under torchrun the process joins the process group even alone (sharded training needs it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job, as torchrun describes it in the environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (its rendezvous is in the environment)

    @classmethod
    def from_environment(cls) -> Distributed:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            launched=all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")),
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group (gloo on CPU, NCCL on CUDA) under torchrun; returns this rank's device."""
        if not (self.enabled or self.launched):
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def max(self, value: float, device: torch.device) -> float:
        """The largest ``value`` over all ranks (so that every rank takes the same decisions)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on any rank."""
        return self.max(float(flag), device) > 0

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of an equally shaped ``tensor``, in rank order."""
        if not self.enabled:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return parts

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
