"""Hugging Face masked-diffusion models in ddlm's pipeline: BERT-family masked LMs, LLaDA, Dream.

:func:`load_transformers_model` turns a ``transformers`` model directory (a ``config.json``
that ddlm did not write) into the model, tokenizer and process a :class:`ddlm.DiffusionPipeline`
holds: masked diffusion with the linear schedule (LLaDA's and MDLM's), over a network that does
not see the noise level. Model code shipped with the weights (``auto_map`` in config.json, as
LLaDA and Dream do) runs only when the caller passes ``trust_remote_code=True``. Causal LMs (GPT-2,
Llama, Qwen) adapted to masked or block diffusion by ``ddlm train --init`` load through :mod:`ddlm.hf.causal`.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from ddlm.device import resolve_precision
from ddlm.errors import DDLMError
from ddlm.families import build_process
from ddlm.hf.model import SHIFTED_MODEL_TYPES, HFBackboneConfig, HFDiffusionModel
from ddlm.hf.tokenizer import HFTokenizer
from ddlm.processes import Process, Vocabulary

__all__ = ["HFBackboneConfig", "HFDiffusionModel", "HFTokenizer", "is_transformers_config", "load_transformers_model"]

MASKED_LM_CLASS = "AutoModelForMaskedLM"
REMOTE_CLASSES = (MASKED_LM_CLASS, "AutoModel")  # LLaDA and Dream register their network under AutoModel
POSITION_FIELDS = ("max_position_embeddings", "max_sequence_length", "n_positions")
PROCESS = {"name": "masked", "schedule": {"name": "linear"}}
CACHE_KEYWORDS = ("past_key_values", "cache")  # LLaDA-style remote code; transformers 5's own name
CAUSAL_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM, ...


def is_transformers_config(config: dict[str, Any]) -> bool:
    """Whether a model directory's config.json was written by ``transformers`` rather than by ddlm."""
    return config.get("library") != "ddlm" and any(key in config for key in ("model_type", "architectures", "auto_map"))


def load_transformers_model(
    directory: Path, config: dict[str, Any], trust_remote_code: bool, device: torch.device, precision: str,
) -> tuple[HFDiffusionModel, HFTokenizer, Process, dict[str, Any]]:
    """The wrapped network on ``device`` (bf16 weights when ``precision`` resolves to bf16), its tokenizer,
    the masked process and a summary describing the source."""
    auto_map = config.get("auto_map") or {}
    if not trust_remote_code:
        refuse_shipped_code(directory, auto_map)
    if is_causal_lm_config(config):
        from ddlm.hf.causal import load_adapted_model  # (it builds on this module's helpers)

        return load_adapted_model(directory, config, trust_remote_code, device, precision)
    transformers = import_transformers()
    class_name = MASKED_LM_CLASS if not auto_map or MASKED_LM_CLASS in auto_map else "AutoModel"
    if auto_map and class_name not in auto_map:
        raise DDLMError(f"{directory}/config.json maps none of {', '.join(REMOTE_CLASSES)} in its auto_map; "
                        "ddlm samples masked LMs and LLaDA/Dream-style models")
    dtype = torch.bfloat16 if resolve_precision(precision, device) == "bf16" else torch.float32
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
        network = getattr(transformers, class_name).from_pretrained(
            str(directory), trust_remote_code=trust_remote_code, **dtype_argument(transformers, dtype))
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DDLMError(f"transformers cannot load {directory} as a masked LM ({first}); ddlm samples masked LMs "
                        "(BERT, RoBERTa, ModernBERT) and LLaDA/Dream-style models") from None
    ddlm_tokenizer = HFTokenizer(tokenizer, mask_id=config.get("mask_token_id"), end_ids=end_ids(config))
    start_ids = ddlm_tokenizer.start_ids if class_name == MASKED_LM_CLASS else []
    backbone = backbone_config(network, ddlm_tokenizer.vocab_size, len(start_ids), directory)
    model_type = backbone.model_type
    shifted = model_type in SHIFTED_MODEL_TYPES
    keyword = next((name for name in CACHE_KEYWORDS if name in forward_parameters(network)), None)
    cache_keyword = keyword if class_name == "AutoModel" and not shifted else None
    model = HFDiffusionModel(network.eval(), backbone, start_ids, shift_logits=shifted, cache_keyword=cache_keyword)
    process = build_process(PROCESS, Vocabulary.of(ddlm_tokenizer))
    summary = {"source": "transformers", "model_type": model_type, "model_class": type(network).__name__,
               "directory": str(directory)}
    return model.to(device), ddlm_tokenizer, process, summary


def import_transformers() -> Any:
    """The ``transformers`` module, or a one-line error naming the extra to install."""
    try:
        import transformers
    except ImportError:
        raise DDLMError("Hugging Face models need the transformers library: pip install 'ddlm[hf]'") from None
    return transformers


def dtype_argument(transformers: Any, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s weight-type keyword: ``dtype`` from transformers 5 on, ``torch_dtype`` before."""
    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}


def is_causal_lm_config(config: dict[str, Any]) -> bool:
    """Whether config.json describes a causal (autoregressive) LM of a ``transformers`` architecture (GPT-2,
    Llama, Qwen, ...: ``*ForCausalLM``, ``*LMHeadModel``), not one with model code of its own."""
    names = config.get("architectures") or []
    return not config.get("auto_map") and any(str(name).endswith(CAUSAL_CLASS_SUFFIXES) for name in names)


def refuse_shipped_code(directory: Path, auto_map: dict[str, Any]) -> None:
    """A one-line refusal when the model or its tokenizer comes with Python code of its own."""
    code = shipped_code(auto_map) | shipped_code(tokenizer_auto_map(directory))
    if code:
        raise DDLMError(f"{directory} ships its own model code ({', '.join(sorted(code))}); pass --trust-remote-code "
                        "(trust_remote_code=True) to run it, if you trust its source")


def backbone_config(network: torch.nn.Module, vocab_size: int, start_tokens: int, directory: Path) -> HFBackboneConfig:
    """What ddlm reports of ``network``; its scores must cover the tokenizer's ``vocab_size`` ids."""
    config = network.config
    output = network.get_output_embeddings()
    output_size = output.weight.shape[0] if output is not None else getattr(config, "vocab_size", vocab_size)
    if output_size < vocab_size:
        raise DDLMError(f"the model scores {output_size} tokens but its tokenizer has {vocab_size}; "
                        f"the tokenizer files in {directory} belong to another model")

    def size(*names: str) -> int:
        return int(next((getattr(config, name) for name in names if getattr(config, name, None)), 0))

    return HFBackboneConfig(
        model_type=str(getattr(config, "model_type", "unknown")), vocab_size=vocab_size,
        context_length=context_length(network, directory) - start_tokens, d_model=size("hidden_size", "d_model"),
        n_layers=size("num_hidden_layers", "n_layers"), n_heads=size("num_attention_heads", "n_heads"),
    )


def tokenizer_auto_map(directory: Path) -> dict[str, Any]:
    """The ``auto_map`` of tokenizer_config.json (a tokenizer with its own code), if any."""
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return (config.get("auto_map") or {}) if isinstance(config, dict) else {}


def shipped_code(auto_map: dict[str, Any]) -> set[str]:
    """The Python modules an ``auto_map`` names ("modeling_llada.LLaDAModelLM" or a list of such)."""
    names = [name for value in auto_map.values() for name in (value if isinstance(value, list) else [value])]
    return {str(name).split("--")[-1].split(".")[0] for name in names if name}


def forward_parameters(network: torch.nn.Module) -> set[str]:
    """The keyword parameters of the network's ``forward``."""
    try:
        return set(inspect.signature(network.forward).parameters)
    except (TypeError, ValueError):
        return set()


def end_ids(config: dict[str, Any]) -> tuple[int, ...]:
    """The end-of-text ids config.json names (``eos_token_id``: one id or a list)."""
    ids = config.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids]
    return tuple(int(i) for i in ids if isinstance(i, int))


def context_length(network: torch.nn.Module, directory: Path) -> int:
    """Positions the network can embed; RoBERTa-style position ids start after the padding id."""
    config = network.config
    positions = next((getattr(config, name) for name in POSITION_FIELDS if getattr(config, name, None)), None)
    if positions is None:
        raise DDLMError(f"{directory}/config.json gives no context length ({' or '.join(POSITION_FIELDS)}); add one")
    embeddings = getattr(getattr(network, "base_model", None), "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    return int(positions) - (padding_idx + 1 if padding_idx is not None else 0)
