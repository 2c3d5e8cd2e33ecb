"""Hugging Face causal LMs (GPT-2, Llama, Qwen2/3, ...) as masked or block diffusion models (``ddlm train --init``).

Adaptation as DiffuGPT, Dream and NBDiff do it: the network reads ddlm's shift (:func:`ddlm.model.shift_right`:
position i reads token i - 1, the tokenizer's BOS, else its EOS, at position 0), so its logits at position i
predict token i with the next-token head reused as is; and it runs under the attention pattern ddlm asks for
instead of its causal mask: full for masked diffusion, block-causal for block diffusion. transformers passes an
already prepared 4-D mask (batch, 1, queries, keys) through unchanged (``masking_utils``) and then leaves SDPA's
``is_causal`` off; it is bool for SDPA and additive float for eager attention. Under the causal pattern (block
size 1) the adapted model is the source model, exactly.

The tokenizer gains a mask token (and a padding token where none is distinct from end-of-text), the embedding
rows of the added tokens the mean of the others. An adapted model is saved in the network's own format; its
config.json carries ``mask_token_id`` and the ``ddlm_adaptation`` record (process, start id, context length,
source), from which :func:`load_adapted_model` rebuilds it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ddlm.device import resolve_precision
from ddlm.errors import DDLMError
from ddlm.families import build_process
from ddlm.hf import (
    CACHE_KEYWORDS,
    backbone_config,
    dtype_argument,
    end_ids,
    forward_parameters,
    import_transformers,
    refuse_shipped_code,
)
from ddlm.hf.model import HFBackboneConfig, HFDiffusionModel, HFPrefixCache
from ddlm.hf.tokenizer import HFTokenizer, find_mask_id, find_pad_id
from ddlm.model import TokenMemory, shift_right
from ddlm.model.transformer import attention_mask
from ddlm.processes import Process, Vocabulary

ADAPTATION_KEY = "ddlm_adaptation"  # config.json: how the network is run (process, start id, context length)
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")  # the ones that take a prepared 4-D mask
ADDED_MASK_TOKEN = "<|mask|>"
ADDED_PAD_TOKEN = "<|pad|>"


class HFCausalCache(HFPrefixCache, TokenMemory):
    """A prefix cache of a shifted network: its past keys/values and the tokens seen (the shift reads the last)."""

    def __init__(self, batch_size: int, capacity: int):
        super().__init__(batch_size)
        self.capacity = capacity


class HFCausalDiffusionModel(HFDiffusionModel):
    """A causal LM network under ddlm's shift and attention patterns, called as :class:`ddlm.model.Transformer` is:
    ``model(tokens, noise, cache=, key_mask=, attention=, positions=, inputs=)``; the noise level is ignored."""

    shifted = True  # position i reads token i - 1 (the processes ask for it)

    def __init__(self, network: torch.nn.Module, config: HFBackboneConfig, start_id: int, cache_keyword: str | None):
        super().__init__(network, config, cache_keyword=cache_keyword)
        implementation = getattr(network.config, "_attn_implementation", None) or "eager"
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise DDLMError(f"ddlm runs adapted causal LMs under {' or '.join(ATTENTION_IMPLEMENTATIONS)} attention, "
                            f"not {implementation}; load the model with attn_implementation='sdpa'")
        self.start_id = start_id

    def shifted_inputs(self, tokens: torch.Tensor, cache: TokenMemory | None = None) -> torch.Tensor:
        """What the network reads at the positions of ``tokens``: :func:`ddlm.model.shift_right` from ``start_id``."""
        return shift_right(tokens, self.start_id, cache)

    def new_cache(self, batch_size: int) -> HFCausalCache:
        """An empty prefix cache (the block sampler's and ``--prefix-cache``'s); a one-line refusal for a network
        whose ``forward`` takes no past keys/values."""
        if self.cache_keyword is None:
            raise DDLMError(f"this {self.config.model_type} network takes no past keys/values; turn use_cache off "
                            "and drop prefix_cache", field="use_cache")
        return HFCausalCache(batch_size, self.context_length)

    def forward(
        self,
        tokens: torch.Tensor,
        noise: torch.Tensor | None = None,
        cache: HFCausalCache | None = None,
        key_mask: torch.Tensor | None = None,
        attention: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, vocab_size) for token ids (B, L), with the arguments of :meth:`ddlm.model.Transformer.forward`:
        ``attention`` (L, keys) bool the pattern (default full), ``key_mask`` (B, keys) the keys that exist,
        ``positions`` (L,) and ``inputs`` (B, L) the positions and shifted tokens when the caller sets them."""
        cached, length = (cache.length if cache is not None else 0), tokens.shape[1]
        if positions is None:
            if cached + length > self.context_length:
                raise ValueError(f"sequence length {cached + length} exceeds context_length {self.context_length}")
            positions = torch.arange(cached, cached + length, device=tokens.device)
        arguments = {
            "input_ids": self.shifted_inputs(tokens, cache) if inputs is None else inputs,
            "position_ids": positions.expand(tokens.shape[0], -1),
            "attention_mask": self.attention_mask(length, cached, key_mask, attention, tokens.device),
        }
        if cache is None:
            logits = self.network(**arguments).logits
        else:
            cache.remember(tokens)
            logits = self.cached_forward(arguments, cache, length)
        return logits[..., : self.config.vocab_size]

    def attention_mask(self, new: int, cached: int, key_mask: torch.Tensor | None, pattern: torch.Tensor | None,
                       device: torch.device) -> torch.Tensor:
        """The network's 4-D mask (B or 1, 1, new, cached + new): ``pattern`` (default: every key) and ``key_mask``,
        bool for SDPA, additive float (0 or the lowest float) for eager attention."""
        allowed, _ = attention_mask(False, new, cached, key_mask, device, pattern)
        if allowed is None:
            allowed = torch.ones(new, cached + new, dtype=torch.bool, device=device)
        allowed = allowed.view(-1, 1, new, cached + new)
        if self.network.config._attn_implementation == "sdpa":
            return allowed
        dtype = next(self.network.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)

    def record_adaptation(self, process: dict[str, Any], mask_id: int, source: str | None) -> None:
        """Write how the network is run into its config (saved with it in config.json): the process, start id,
        context length, mask id and the source's name."""
        setattr(self.network.config, ADAPTATION_KEY, {"process": process, "start_id": self.start_id,
                                                      "context_length": self.context_length, "source": source})
        self.network.config.mask_token_id = mask_id

    def with_context(self, context_length: int) -> HFCausalDiffusionModel:
        """This model with ``context_length`` canvas positions (at most the network's)."""
        self.config = replace(self.config, context_length=min(context_length, self.config.context_length))
        return self


def load_causal_lm(directory: Path, trust_remote_code: bool, dtype: torch.dtype) -> tuple[Any, torch.nn.Module]:
    """The ``transformers`` tokenizer and ``AutoModelForCausalLM`` network of ``directory`` (weights in ``dtype``)."""
    transformers = import_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
        network = transformers.AutoModelForCausalLM.from_pretrained(
            str(directory), trust_remote_code=trust_remote_code, **dtype_argument(transformers, dtype))
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DDLMError(f"transformers cannot load {directory} as a causal LM ({first}); ddlm adapts GPT-2, Llama "
                        "and Qwen-style models saved by save_pretrained") from None
    return tokenizer, network.eval()


def wrap(network: torch.nn.Module, tokenizer: HFTokenizer, start_id: int, directory: Path) -> HFCausalDiffusionModel:
    """``network`` as an :class:`HFCausalDiffusionModel` over ``tokenizer``'s vocabulary."""
    keyword = next((name for name in CACHE_KEYWORDS if name in forward_parameters(network)), None)
    return HFCausalDiffusionModel(network, backbone_config(network, tokenizer.vocab_size, 0, directory), start_id,
                                  keyword)


def adaptation_source(directory: Path, config: dict[str, Any],
                      trust_remote_code: bool = False) -> tuple[HFCausalDiffusionModel, HFTokenizer]:
    """The causal LM in ``directory`` ready to adapt (fp32 on the CPU), and its tokenizer, given a mask token and a
    padding token distinct from end-of-text where it lacks them; the shift starts from its BOS, else its EOS."""
    if not trust_remote_code:
        refuse_shipped_code(directory, config.get("auto_map") or {})
    tokenizer, network = load_causal_lm(directory, trust_remote_code, torch.float32)
    add_missing_tokens(tokenizer, network, end_ids(config))
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start_id is None:
        raise DDLMError(f"the tokenizer in {directory} has neither a BOS nor an EOS token to start the shift with; "
                        "add one to its tokenizer files")
    ddlm_tokenizer = HFTokenizer(tokenizer, end_ids=end_ids(config))
    return wrap(network, ddlm_tokenizer, int(start_id), directory), ddlm_tokenizer


def add_missing_tokens(tokenizer: Any, network: torch.nn.Module, end: tuple[int, ...]) -> None:
    """Add a mask token, and a padding token unless one distinct from the end and mask tokens exists, to
    ``tokenizer``; grow ``network``'s embeddings to fit, the added rows the mean of the known ones."""
    known = len(tokenizer)
    if find_mask_id(tokenizer) is None:
        tokenizer.add_special_tokens({"mask_token": ADDED_MASK_TOKEN})
    if find_pad_id(tokenizer, {find_mask_id(tokenizer), tokenizer.eos_token_id, *end}) is None:
        tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
    if len(tokenizer) > known:
        grow_embeddings(network, known, len(tokenizer))


@torch.no_grad()
def grow_embeddings(network: torch.nn.Module, known: int, size: int) -> None:
    """Rows for ids up to ``size`` in the input (and output) embeddings; rows ``known`` to ``size`` (the added
    tokens, or rows a padded matrix already had but no token used) become the mean of the rows before them."""
    if network.get_input_embeddings().weight.shape[0] < size:
        network.resize_token_embeddings(size, mean_resizing=False)
    matrices = {id(m.weight): m.weight for m in (network.get_input_embeddings(), network.get_output_embeddings())
                if m is not None}
    for weight in matrices.values():
        weight[known:size] = weight[:known].mean(dim=0)


def load_adapted_model(directory: Path, config: dict[str, Any], trust_remote_code: bool, device: torch.device,
                       precision: str) -> tuple[HFCausalDiffusionModel, HFTokenizer, Process, dict[str, Any]]:
    """The adapted model saved in ``directory`` on ``device`` (bf16 weights when ``precision`` resolves to bf16),
    its tokenizer, the process it was trained with and a summary; a causal LM not yet adapted is refused."""
    record = config.get(ADAPTATION_KEY)
    if not isinstance(record, dict):
        raise DDLMError(f"{directory} holds an autoregressive LM ({', '.join(config.get('architectures') or [])}); "
                        f"adapt it to diffusion first: ddlm train --init {directory} --out DIR process.name=block")
    dtype = torch.bfloat16 if resolve_precision(precision, device) == "bf16" else torch.float32
    tokenizer, network = load_causal_lm(directory, trust_remote_code, dtype)
    ddlm_tokenizer = HFTokenizer(tokenizer, mask_id=config.get("mask_token_id"), end_ids=end_ids(config))
    try:
        model = wrap(network, ddlm_tokenizer, int(record["start_id"]), directory)
        model.with_context(int(record["context_length"]))
        process = build_process(record["process"], Vocabulary.of(ddlm_tokenizer))
    except (KeyError, TypeError, ValueError) as error:
        raise DDLMError(f"{directory}/config.json has an incomplete {ADAPTATION_KEY} record ({error}); "
                        "re-export the model") from None
    summary = {"source": "transformers", "model_type": model.config.model_type,
               "model_class": type(network).__name__, "directory": str(directory), "adapted_from": record.get("source")}
    return model.to(device), ddlm_tokenizer, process, summary
