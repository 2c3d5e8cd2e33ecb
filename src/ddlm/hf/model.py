"""A Hugging Face masked-diffusion network behind the interface of ddlm's own backbone.

``logits = model(tokens, noise, key_mask=...)`` with shape (B, L, vocab_size), as
:class:`ddlm.model.Transformer` gives them: the noise level is ignored (these models are
not conditioned on it), ``key_mask`` becomes the Hugging Face ``attention_mask``, and the
logits are cut to the tokenizer's vocabulary (LLaDA pads its embedding matrix past it).
Two model-specific conventions are handled here and nowhere else: encoder models (BERT,
RoBERTa, ModernBERT) see their tokenizer's start token (``[CLS]``, ``<s>``) before the
canvas, as in pre-training, and Dream's network predicts position i at position i - 1.
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
    """What ddlm reads of a Hugging Face network: its size, its context, and that it does not see the noise level."""

    model_type: str
    vocab_size: int  # the tokenizer's ids; logits are cut to these
    context_length: int  # canvas positions (the start tokens excluded)
    d_model: int
    n_layers: int
    time_conditioning: bool = False
    causal: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HFDiffusionModel(nn.Module):
    """``network`` (a ``transformers`` model returning ``.logits``) as a ddlm denoiser without noise conditioning."""

    uses_noise = False

    def __init__(self, network: nn.Module, config: HFBackboneConfig, start_ids: list[int] | tuple[int, ...] = (),
                 shift_logits: bool = False):
        super().__init__()
        self.network = network
        self.config = config
        self.start_ids = list(start_ids)
        self.shift_logits = shift_logits

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

    def new_cache(self, batch_size: int):
        """Hugging Face models run without ddlm's prefix cache: refuse the option in one line."""
        raise DDLMError(
            f"the prefix cache is off for Hugging Face models ({self.config.model_type}): ddlm does not drive "
            "their key/value caches; drop --prefix-cache (prefix_cache=True)"
        )

    def forward(
        self,
        tokens: torch.Tensor,
        noise: torch.Tensor | None = None,
        cache: Any = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, vocab_size) for token ids (B, L); ``noise`` is ignored; ``key_mask`` hides padding."""
        if cache is not None:
            self.new_cache(tokens.shape[0])
        if tokens.shape[1] > self.config.context_length:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds context_length {self.config.context_length}")
        start = len(self.start_ids)
        if start:
            lead = torch.tensor(self.start_ids, dtype=tokens.dtype, device=tokens.device).expand(tokens.shape[0], -1)
            tokens = torch.cat((lead, tokens), dim=1)
            if key_mask is not None:
                key_mask = torch.cat((key_mask.new_ones(key_mask.shape[0], start), key_mask), dim=1)
        inputs = {"input_ids": tokens}
        if key_mask is not None:
            inputs["attention_mask"] = key_mask.long()
        logits = self.network(**inputs).logits
        if self.shift_logits:
            logits = torch.cat((logits[:, :1], logits[:, :-1]), dim=1)
        return logits[:, start:, : self.config.vocab_size]
