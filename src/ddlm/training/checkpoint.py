"""Training checkpoints: one safetensors file holding one nested dictionary, every stateful part of a run.

The dictionary's tensors (model, EMA, optimizer moments, RNG states) are stored as
safetensors under their path ("optimizer/state/0/exp_avg"); everything else (step, data
position, optimizer settings, ...) as JSON in the file's metadata. Nothing is ever unpickled.
A sharded run's file keeps its model, optimizer and EMA tensors apart, in the directory it names under
``SHARDS_KEY`` (:mod:`ddlm.training.sharding`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path, error_reason

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = 2  # 1, the flat layout before the nested dictionary, is no longer read
EXACT_STEP_COUNTS = 2**24  # the optimizer counts its steps in float32, exact up to here
SHARDS_KEY = "shards"  # a sharded checkpoint: the directory holding its model, optimizer and EMA


def split_tensors(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A nested dictionary as (tensors keyed by path, the rest as a JSON-able tree)."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {}
    for key, value in state.items():
        key = str(key)
        if "/" in key:
            raise ValueError(f"state key {key!r} contains '/'")
        if isinstance(value, torch.Tensor):
            tensors[prefix + key] = value
        elif isinstance(value, dict):
            inner_tensors, rest[key] = split_tensors(value, f"{prefix}{key}/")
            tensors.update(inner_tensors)
        else:
            rest[key] = value
    return tensors, rest


def join_tensors(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``split_tensors`` (dictionary keys come back as strings)."""
    for path, tensor in tensors.items():
        *parents, name = path.split("/")
        node = rest
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = tensor
    return rest


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a nested state dictionary atomically; a failed write keeps the previous file."""
    tensors, rest = split_tensors(state)
    contiguous = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    metadata = {"format": str(FORMAT), "trainer_state": json.dumps(rest)}
    try:
        with atomic_path(path) as tmp:
            save_file(contiguous, str(tmp), metadata=metadata)
    except (OSError, SafetensorError) as error:
        raise DDLMError(
            f"could not write the checkpoint {path} ({error_reason(error)}); the previous checkpoint is intact: "
            "free disk space or raise the file-size limit, then continue with --resume"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The nested state dictionary written by ``save_checkpoint``."""
    path = Path(path)
    if not path.is_file():
        raise DDLMError(f"no checkpoint at {path}; train without --resume first")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        rest = json.loads(metadata["trainer_state"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as error:
        raise DDLMError(f"checkpoint {path} is corrupt ({error}); delete it or resume from a copy") from None
    if metadata.get("format") is None:
        raise DDLMError(f"checkpoint {path} is in the flat layout of an earlier ddlm (format 1), which this version "
                        "no longer reads; resume it with the ddlm that wrote it, or start the run again")
    state = join_tensors(tensors, rest)
    if SHARDS_KEY not in state:  # (a sharded one is checked once its shards are read)
        check_step(state, path)
    return state


def check_step(state: dict[str, Any], path: Path) -> None:
    """A one-line error when the step in the metadata is not the number of steps the optimizer took.

    The optimizer counts its steps in its tensors, apart from the metadata, so an edited or damaged
    step is caught instead of resuming the schedule and the data from the wrong place.
    """
    try:
        recorded = int(state["train"]["step"])
        entries = state["optimizer"].get("state", {}).values()  # none before the first step of a sharded run
        counts = [float(entry["step"]) for entry in entries if "step" in entry]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DDLMError(f"checkpoint {path} is corrupt (no valid step: {error!r}); "
                        "delete it or resume from a copy") from None
    taken = int(max(counts, default=0))
    if taken != recorded and min(taken, recorded) < EXACT_STEP_COUNTS:
        raise DDLMError(f"checkpoint {path} says step {recorded} but its optimizer took {taken} steps (its metadata "
                        "was edited or damaged); resume from an intact copy of the checkpoint")

