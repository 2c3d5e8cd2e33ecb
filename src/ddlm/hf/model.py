"""A Hugging Face masked-diffusion network behind the interface of ddlm's own backbone.

``logits = model(tokens, noise, key_mask=...)`` with shape (B, L, vocab_size), as
:class:`ddlm.model.Transformer` gives them: the noise level is ignored (these models are
not conditioned on it), ``key_mask`` becomes the Hugging Face ``attention_mask``, and the
logits are cut to the tokenizer's vocabulary (LLaDA pads its embedding matrix past it).
Two model-specific conventions are handled here and nowhere else: encoder models (BERT,
RoBERTa, ModernBERT) see their tokenizer's start token (``[CLS]``, ``<s>``) before the
canvas, as in pre-training, and Dream's network predicts position i at position i - 1.

The prefix cache (``new_cache``) drives the network's own ``past_key_values`` the way
Fast-dLLM drives LLaDA's: one full pass stores every position's keys and values, then the
positions from the current block on are run again against the stored prefix, cut to its
length. It is offered for LLaDA-style networks (``AutoModel``) whose ``forward`` takes
``past_key_values`` (or ``cache``, its name from transformers 5 on); a model whose code refuses
a cache (LLaDA's own asserts) is told in one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddlm.errors import DDLMError
from ddlm.hf.files import save_through_staging

SHIFTED_MODEL_TYPES = ("Dream",)  # logits at position i predict token i + 1 (Dream's generation code)


@dataclass(frozen=True)
class HFBackboneConfig:
    """What ddlm reports of a Hugging Face network: its kind, size and context."""

    model_type: str
    vocab_size: int  # the tokenizer's ids; logits are cut to these
    context_length: int  # canvas positions (the start tokens excluded)
    d_model: int
    n_layers: int
    n_heads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HFPrefixCache:
    """ddlm's cache protocol (``batch_size``, a settable ``length`` of canvas positions) over the
    ``past_key_values`` a Hugging Face network returns."""

    keeps_suffix = False  # a prefix cache only: no dual cache

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.length = 0
        self.past: Any = None


def crop(past: Any, length: int) -> Any:
    """``past_key_values`` cut to the first ``length`` positions: a Cache object or tuples of (B, H, T, D) tensors."""
    if hasattr(past, "crop"):
        surplus = past.get_seq_length() - length
        if surplus > 0:  # a negative count removes that many positions (transformers 4 and 5; 5 refuses a length)
            past.crop(-surplus)
        return past
    return tuple(tuple(tensor[:, :, :length] for tensor in layer) for layer in past)


class HFDiffusionModel(nn.Module):
    """``network`` (a ``transformers`` model returning ``.logits``) as a ddlm denoiser without noise conditioning."""

    uses_noise = False

    def __init__(self, network: nn.Module, config: HFBackboneConfig, start_ids: list[int] | tuple[int, ...] = (),
                 shift_logits: bool = False, cache_keyword: str | None = None):
        super().__init__()
        self.network = network
        self.config = config
        self.start_ids = list(start_ids)
        self.shift_logits = shift_logits
        self.cache_keyword = cache_keyword  # the forward argument taking past keys/values; None: no prefix cache

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def num_parameters(self, include_embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.network.parameters())
        embeddings = self.network.get_input_embeddings()
        return total if include_embeddings or embeddings is None else total - embeddings.weight.numel()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the network in its own ``transformers`` format (with any model code it shipped with)."""
        save_through_staging(directory, self.network.save_pretrained)

    def new_cache(self, batch_size: int) -> HFPrefixCache:
        """An empty prefix cache, for a network that takes ``past_key_values``; else a one-line refusal."""
        if self.cache_keyword is None:
            raise DDLMError(
                f"the prefix cache is off for this Hugging Face model ({self.config.model_type}): ddlm drives only "
                "LLaDA-style past_key_values; drop prefix_cache and dual_cache", field="prefix_cache"
            )
        return HFPrefixCache(batch_size)

    def forward(
        self,
        tokens: torch.Tensor,
        noise: torch.Tensor | None = None,
        cache: Any = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, vocab_size) for token ids (B, L); ``noise`` is ignored; ``key_mask`` hides padding.

        With a ``cache`` (from :meth:`new_cache`), ``tokens`` are the positions after the
        ``cache.length`` stored ones, as for ddlm's own backbone; ``key_mask`` covers both.
        """
        cached = cache.length if cache is not None else 0
        if cached + tokens.shape[1] > self.config.context_length:
            raise ValueError(f"sequence length {cached + tokens.shape[1]} exceeds context_length "
                             f"{self.config.context_length}")
        start = len(self.start_ids) if not cached else 0  # start tokens already sit in a non-empty cache
        if start:
            lead = torch.tensor(self.start_ids, dtype=tokens.dtype, device=tokens.device).expand(tokens.shape[0], -1)
            tokens = torch.cat((lead, tokens), dim=1)
        if key_mask is not None and self.start_ids:
            key_mask = torch.cat((key_mask.new_ones(key_mask.shape[0], len(self.start_ids)), key_mask), dim=1)
        inputs: dict[str, Any] = {"input_ids": tokens}
        if key_mask is not None:
            inputs["attention_mask"] = key_mask.long()
        if cache is None:
            logits = self.network(**inputs).logits
        else:
            logits = self.cached_forward(inputs, cache, tokens.shape[1] - start)
        if self.shift_logits:
            logits = torch.cat((logits[:, :1], logits[:, :-1]), dim=1)
        return logits[:, start:, : self.config.vocab_size]

    def cached_forward(self, inputs: dict[str, Any], cache: HFPrefixCache, new: int) -> torch.Tensor:
        """Run ``inputs`` against the first ``cache.length`` stored positions, then store the new ones too."""
        if cache.length:
            inputs[self.cache_keyword] = crop(cache.past, len(self.start_ids) + cache.length)
        try:
            output = self.network(**inputs, use_cache=True)
        except (AssertionError, TypeError, ValueError, NotImplementedError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise DDLMError(f"this model's code refuses a key/value cache ({reason}); "
                            "drop prefix_cache", field="prefix_cache") from None
        past = next((output.get(name) for name in ("cache", "past_key_values") if output.get(name) is not None), None)
        if past is None:  # (transformers 5 renamed the field to cache)
            raise DDLMError("this model's code returns no key/value cache; drop prefix_cache", field="prefix_cache")
        cache.past = past
        cache.length += new
        return output.logits
