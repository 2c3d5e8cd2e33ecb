"""Training checkpoints: one safetensors file holding every stateful part of a run.

Tensors (model, EMA, optimizer moments, RNG states) are stored as safetensors; the
rest (step, data position, optimizer hyper-parameters, ...) as JSON in its metadata.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path

CHECKPOINT_FILE = "checkpoint.safetensors"


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (keys "index/name") and JSON-able settings."""
    state = optimizer.state_dict()
    tensors = {
        f"{index}/{name}": value.detach().clone()
        for index, entry in state["state"].items()
        for name, value in entry.items()
    }
    return tensors, {"param_groups": state["param_groups"]}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state dict rebuilt from ``optimizer_to_flat``'s output."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write tensors plus a JSON state atomically."""
    contiguous = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={"trainer_state": json.dumps(state)})


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON state of a checkpoint written by ``save_checkpoint``."""
    path = Path(path)
    if not path.is_file():
        raise DDLMError(f"no checkpoint at {path}; train without --resume first")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        state = json.loads(metadata["trainer_state"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as error:
        raise DDLMError(f"checkpoint {path} is corrupt ({error}); delete it or resume from a copy") from None
    return tensors, state


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{key}": value for key, value in tensors.items()}


def take_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {key[start:]: value for key, value in tensors.items() if key.startswith(prefix + "/")}
