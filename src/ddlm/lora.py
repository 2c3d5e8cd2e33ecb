"""LoRA adapters through ``peft``, on ddlm's backbone and on Hugging Face networks alike.

:func:`add_lora` puts low-rank adapters into the named linear layers and freezes everything else;
:func:`merged` folds them into the base weights (the model that is exported by default);
:func:`save_adapter` writes them alone in peft's own format (``adapter_config.json``, whose
``base_model_name_or_path`` names the base model, and ``adapter_model.safetensors``), which
:func:`load_adapted` (``DiffusionPipeline.from_pretrained`` on such a directory) merges back into
its base. peft is needed only here: ``pip install 'ddlm[finetune]'``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path
from ddlm.hf.files import save_through_staging

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft's names for the weights of an adapter on a model
# Linear layers adapted by default, by family; the output head is never adapted.
DEFAULT_TARGETS = {
    "ddlm": ("qkv", "out", "gate_up", "down"),
    "hf": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # Llama, Qwen2 (Dream)
           "attn_out", "ff_proj", "ff_out",  # LLaDA
           "query", "key", "value", "dense",  # BERT, RoBERTa
           "Wqkv", "Wo", "Wi",  # ModernBERT
           "qkv", "out", "gate_up", "down"),  # ddlm's backbone inside remote code
}


def peft_module() -> Any:
    try:
        import peft
    except ImportError:
        raise DDLMError("LoRA needs the peft library: pip install 'ddlm[finetune]' (or drop --lora-rank)") from None
    return peft


def lora_root(model: nn.Module) -> nn.Module:
    """The module adapters go into: a Hugging Face model's own network, or ddlm's backbone itself."""
    return getattr(model, "network", model)


def lora_targets(model: nn.Module, names: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Full names of the linear layers of ``model`` whose own name is in ``names`` (default: the family's
    projections), the output head excluded; a one-line error names a target that matches nothing."""
    root = lora_root(model)
    head_of = getattr(root, "get_output_embeddings", None)
    head = head_of() if head_of is not None else None
    linear = {name: module for name, module in root.named_modules() if isinstance(module, nn.Linear) and module is not head}
    leaf_names = sorted({name.rpartition(".")[2] for name in linear})
    wanted = set(names or DEFAULT_TARGETS["hf" if root is not model else "ddlm"])
    if names:
        unknown = sorted(wanted - set(leaf_names))
        if unknown:
            raise DDLMError(f"--lora-targets {','.join(unknown)}: no linear layer of this model has that name; "
                            f"choose among {','.join(leaf_names)}")
    chosen = [name for name in linear if name.rpartition(".")[2] in wanted]
    if not chosen:
        raise DDLMError(f"no linear layer of this model has a default LoRA target name; pass --lora-targets "
                        f"with some of {','.join(leaf_names)}")
    return chosen


def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
             targets: list[str] | tuple[str, ...] | None = None) -> Any:
    """Put rank-``rank`` adapters (scale alpha / rank, B at zero: the model is unchanged) into ``model``'s
    target layers and freeze every other parameter; returns the peft ``LoraConfig``."""
    peft = peft_module()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(model, targets))
    peft.inject_adapter_in_model(config, lora_root(model))
    return config


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layer = peft_module().tuners.lora.LoraLayer
    return [(name, module) for name, module in model.named_modules() if isinstance(module, layer)]


@torch.no_grad()
def merged(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose adapters are folded into their base layers, which replace them: the plain
    architecture again, with the same outputs."""
    model = copy.deepcopy(model)
    for name, module in lora_layers(model):
        module.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model


def save_adapter(model: nn.Module, config: Any, base: str, directory: str | Path) -> None:
    """The adapters of ``model`` alone, in peft's format, with ``base`` (the model they adapt) named."""
    peft = peft_module()
    directory = Path(directory)
    state = peft.get_peft_model_state_dict(lora_root(model))
    with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
        save_file({PEFT_PREFIX + name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}, str(tmp))
    config = copy.deepcopy(config)
    config.base_model_name_or_path = base
    save_through_staging(directory, config.save_pretrained)


def is_adapter_directory(directory: Path) -> bool:
    return (directory / ADAPTER_CONFIG).is_file() and not (directory / "config.json").is_file()


def apply_adapter(model: nn.Module, directory: Path) -> None:
    """Load the adapter saved in ``directory`` into ``model`` (its base); a one-line error if they do not fit."""
    peft = peft_module()
    config = peft.LoraConfig.from_pretrained(str(directory))
    peft.inject_adapter_in_model(config, lora_root(model))
    state = {name.removeprefix(PEFT_PREFIX): tensor for name, tensor in load_file(str(directory / ADAPTER_WEIGHTS)).items()}
    result = peft.set_peft_model_state_dict(lora_root(model), state)
    missing = [name for name in result.missing_keys if "lora_" in name]
    if missing or result.unexpected_keys:
        raise DDLMError(f"the adapter in {directory} does not fit its base model ({(missing or result.unexpected_keys)[0]}); "
                        "check base_model_name_or_path in its adapter_config.json")


def load_adapted(directory: Path, **loading: Any) -> Any:
    """The pipeline of an adapter directory: its base model (``base_model_name_or_path``, with its tokenizer
    and process) with the adapter merged in, and the directory's training summary."""
    from ddlm.pipeline import SUMMARY_FILE, DiffusionPipeline, read_json

    base = read_json(directory / ADAPTER_CONFIG, what="adapter config").get("base_model_name_or_path")
    if not base:
        raise DDLMError(f"{directory / ADAPTER_CONFIG} names no base model (base_model_name_or_path); add it")
    pipe = DiffusionPipeline.from_pretrained(base, **loading)
    apply_adapter(pipe.model, directory)
    summary_path = directory / SUMMARY_FILE
    summary = read_json(summary_path, what="training summary") if summary_path.is_file() else {}
    return DiffusionPipeline(merged(pipe.model), pipe.tokenizer, pipe.process, summary, pipe.precision,
                             loading.get("compile_model", False), pipe.sampler_defaults)
