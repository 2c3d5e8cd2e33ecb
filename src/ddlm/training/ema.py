"""Exponential moving average of the weights, kept in float32 (sharded like the parameters under FSDP)."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.tensor import DTensor

from ddlm.errors import DDLMError


class EMA:
    """EMA of a model's trainable parameters with the usual warm-up decay min(decay, (1+n)/(10+n)); frozen
    ones (under LoRA) are the model's own."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().clone().float() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.shadow[name].lerp_(p.detach().float(), 1 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": dict(self.shadow), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise DDLMError("the checkpoint's EMA does not fit this model; resume with the run's own model settings")
        self.shadow = {name: tensor.to(self.shadow[name].device, torch.float32) for name, tensor in state["shadow"].items()}
        self.updates = int(state["updates"])

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the averaged weights into ``model`` (same architecture and frozen weights, unsharded).

        Sharded averages are gathered: then every process must call this (collective)."""
        parameters = dict(model.named_parameters())
        for name, value in self.shadow.items():
            parameters[name].copy_(value.full_tensor() if isinstance(value, DTensor) else value)
