"""Sharded training under ``torchrun`` (``optim.parallel=fsdp``, FSDP2) and its checkpoints.

Each transformer block, then the rest of the model, is sharded over the processes with
``fully_shard``: a process holds 1/N of the parameters, gradients, optimizer moments and EMA.

A sharded run's checkpoint has two parts. The model, optimizer and EMA tensors go through
``torch.distributed.checkpoint`` (DCP) into ``checkpoint-shards/step-NNNNNNNN``, each process writing
its own shards; any number of processes, or one without torchrun, reads them back (DCP reshards).
``checkpoint.safetensors`` holds the rest of the run's state, as for an unsharded run, and names that
directory. The directory is written under a temporary name and renamed, and the file naming it is
replaced after that in one step, so a crash at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ddlm.errors import DDLMError
from ddlm.fileio import error_reason
from ddlm.model import Transformer
from ddlm.training.checkpoint import CHECKPOINT_FILE, SHARDS_KEY, save_checkpoint, split_tensors
from ddlm.training.distributed import Distributed
from ddlm.training.ema import EMA

PARALLEL_MODES = ("ddp", "fsdp")
SHARDS_DIR = "checkpoint-shards"
PARTIAL_SUFFIX = ".partial"
# Checkpoints keep the trained parameters (all of them, or the LoRA adapters) and the buffers.
STATE_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


def check_parallel(mode: str, dist: Distributed) -> None:
    """A one-line error for an unknown ``optim.parallel``, or ``fsdp`` outside torchrun."""
    if mode not in PARALLEL_MODES:
        raise DDLMError(f"unknown optim.parallel={mode!r}; use ddp (the default) or fsdp (sharded, under torchrun)")
    if mode == "fsdp" and not dist.launched:
        raise DDLMError("optim.parallel=fsdp shards the model over torchrun's processes: launch with "
                        "`torchrun --nproc_per_node N -m ddlm.cli train ...`, or set optim.parallel=ddp for one process")


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """Parameters gathered in bf16 for a bf16 run (else fp32); gradients always reduced in fp32."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated layers sharded one by one: a ddlm backbone's blocks, or a Hugging Face network's longest
    list of layers of one class (its decoder or encoder layers)."""
    if isinstance(model, Transformer):
        return list(model.blocks)
    stacks = [list(stack) for stack in model.modules()
              if isinstance(stack, nn.ModuleList) and len(stack) and len({type(layer) for layer in stack}) == 1]
    if not stacks:
        raise DDLMError(f"cannot find the transformer layers of {type(model).__name__} to shard; use optim.parallel=ddp")
    return max(stacks, key=len)


def shard_model(model: nn.Module, precision: str, device: torch.device, world_size: int) -> nn.Module:
    """``model`` sharded in place over the processes: each block, then the root (embeddings, head)."""
    mesh = init_device_mesh(device.type, (world_size,))
    policy = mixed_precision(precision)
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


@contextlib.contextmanager
def gradients_kept_local(model: nn.Module) -> Iterator[None]:
    """A micro-batch before the last of a step: its gradients stay on this process, unreduced."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dictionary into ``model``, sharded or not."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


# ----- checkpoints -----


def state_parts(model: nn.Module, optimizer: torch.optim.Optimizer | None, ema: EMA) -> dict[str, Any]:
    """Model, optimizer and EMA state keyed by parameter names (shards under FSDP), as DCP saves them.

    Without ``optimizer`` (one that has not stepped has no state: reading it would create some) the
    optimizer is left out.
    """
    if optimizer is None:
        return {"model": get_model_state_dict(model, options=STATE_OPTIONS), "ema": ema.state_dict()}
    model_state, optimizer_state = get_state_dict(model, optimizer, options=STATE_OPTIONS)
    return {"model": model_state, "optimizer": optimizer_state, "ema": ema.state_dict()}


def load_parts(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Set the model and (when saved) the optimizer from ``state_parts``' layout."""
    if "state" in state.get("optimizer", {}):
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=STATE_OPTIONS)
    else:
        set_model_state_dict(model, state["model"], options=STATE_OPTIONS)


def save_sharded_checkpoint(out_dir: Path, state: dict[str, Any], dist: Distributed) -> None:
    """Write ``state`` (the trainer's, with ``state_parts``' model, optimizer and EMA) as a sharded
    checkpoint in ``out_dir`` (collective: every process calls it)."""
    parts = {key: state[key] for key in ("model", "optimizer", "ema") if key in state}
    tensors, rest = split_tensors(parts)
    root = out_dir / SHARDS_DIR
    name = f"step-{int(state['train']['step']):08d}"
    partial, final = root / (name + PARTIAL_SUFFIX), root / name
    if dist.is_main:  # left by a crash (the checkpoint file never names a step being written)
        for stale in (partial, final):
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    try:
        dcp.save(tensors, checkpoint_id=partial)
        if dist.is_main:
            partial.rename(final)
            save_checkpoint(out_dir / CHECKPOINT_FILE, {**state, **rest, SHARDS_KEY: name})
    except (OSError, CheckpointException) as error:
        raise DDLMError(f"could not write the checkpoint {final} ({error_reason(error)}); the previous checkpoint is "
                        "intact: free disk space, then continue with --resume") from None
    if dist.is_main:
        remove_shards(out_dir, keep=name)
    dist.barrier()


def remove_shards(out_dir: Path, keep: str | None = None) -> None:
    """Delete the sharded checkpoints in ``out_dir`` other than ``keep`` (ones replaced, or left by a crash)."""
    root = out_dir / SHARDS_DIR
    if not root.is_dir():
        return
    for directory in root.iterdir():
        if directory.name != keep:
            shutil.rmtree(directory, ignore_errors=True)
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)


def read_shards(out_dir: Path, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                ema: EMA) -> dict[str, Any]:
    """``state`` (read from a sharded checkpoint's file) with its model, optimizer and EMA read from its
    shards, resharded to this run's processes, in ``state_parts``' layout."""
    directory = out_dir / SHARDS_DIR / str(state[SHARDS_KEY])
    stepped = bool(state.get("optimizer", {}).get("state"))
    template = state_parts(model, optimizer if stepped else None, ema)
    tensors, _ = split_tensors(template)
    try:
        saved = set(dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata)
    except (OSError, EOFError, pickle.UnpicklingError) as error:
        raise DDLMError(f"the checkpoint's shards in {directory} are missing or corrupt ({error_reason(error)}); "
                        "resume from an intact copy of the run") from None
    # Model and EMA must match; the optimizer may lack moments of parameters that never had a gradient.
    misfits = {key for key in set(tensors) ^ saved if not key.startswith("optimizer/")} | (saved - set(tensors))
    if misfits:
        raise DDLMError(f"checkpoint {directory} does not fit this model ({min(misfits)}); resume with the run's "
                        "own model and LoRA settings")
    try:
        with warnings.catch_warnings():  # read by one process alone, as intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({key: tensors[key] for key in saved}, checkpoint_id=directory,
                     no_dist=not torch_dist.is_initialized())
    except (CheckpointException, RuntimeError, ValueError) as error:
        raise DDLMError(f"checkpoint {directory} does not fit this model ({str(error).splitlines()[0][:200]}); "
                        "resume with the run's own model settings") from None
    optimizer_rest = {"param_groups": state["optimizer"]["param_groups"]} if stepped else {}
    return {**state, "model": template["model"], "ema": {**template["ema"], "updates": state["ema"]["updates"]},
            "optimizer": {**template.get("optimizer", {}), **optimizer_rest}}
