"""The stateful parts of a run besides model, optimizer and loader: its counters and its random states."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ddlm.training.distributed import Distributed


@dataclass
class TrainState:
    """The counters of a run (the rest of its state lives in tensors)."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    best_valid: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.elapsed, self.best_valid = float(state["elapsed"]), state["best_valid"]


class RandomStates:
    """One rank's random generators: torch's global one (dropout), CUDA's, and the loss's noise generator."""

    def __init__(self, device: torch.device, seed: int, dist: Distributed):
        self.device = device
        self.dist = dist
        self.noise = torch.Generator(device=device)
        self.noise.manual_seed(seed + 1 + dist.rank)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every rank's states, keyed by generator then rank (collective: all ranks call it)."""
        states = {"torch": torch.get_rng_state(), "noise": self.noise.get_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            name: {str(rank): part.cpu() for rank, part in enumerate(self.dist.gather(state.to(self.device)))}
            for name, state in states.items()
        }

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """This rank's saved states; a rank the run did not have (a sharded run resumed on more processes)
        keeps its fresh ones."""
        rank = str(self.dist.rank)
        if rank not in state["noise"]:
            return
        torch.set_rng_state(state["torch"][rank])
        self.noise.set_state(state["noise"][rank])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"][rank], self.device)
