"""Block diffusion (BD3-LM, Arriola et al. 2025): autoregressive over blocks, masked diffusion inside each.

The sequence is cut into blocks of ``block_size`` tokens and
log p(x) = sum_b log p(x^b | x^{<b}), each factor a masked-diffusion model of block b given the
clean earlier blocks. So the NELBO is the sum over blocks of the masked NELBO of each block,
each block with its own noise level, in nats per real token like every other process.
Block size 1 is the autoregressive model (a masked token given the clean prefix is next-token
prediction, and the NELBO weight integrates to 1); block size = context is masked diffusion.

Training takes one forward pass per batch: the model reads x_t (all noisy blocks) followed by
x_0 (all clean blocks), both at positions 0..L-1, under :func:`training_attention`: noisy
block b sees itself and the clean blocks before it; clean block b sees the clean blocks up to
itself. The loss reuses the masked process piece by piece on a batch whose rows are blocks.

The backbone does not see the noise level (BD3-LM's default), so the sampler may cache the
keys and values of finished blocks exactly. Clipped noise (``clip_min``, ``clip_max``): in
training mode, times are drawn from U[clip_min, clip_max] instead of U[eps, 1] (for the
linear schedule, t is the mask rate), which lowers the gradient variance (BD3-LM's clipped
schedules); the loss is then a reweighted objective, not the NELBO. In eval mode
(``model.eval()``, as in validation and ``ddlm eval``) the full range is always used.
"""

from __future__ import annotations

from typing import Any

import torch

from ddlm.errors import DDLMError
from ddlm.processes.base import LossOutput, Vocabulary, unwrapped
from ddlm.processes.masked import MaskedDiffusion


def block_causal_attention(queries: torch.Tensor, keys: torch.Tensor, block_size: int) -> torch.Tensor:
    """(Q, K) bool: a query at position ``queries[i]`` sees a key at ``keys[j]`` when the key's block
    is not after the query's block (positions are token indices; blocks start at multiples of block_size)."""
    return (queries[:, None] // block_size) >= (keys[None, :] // block_size)


def training_attention(length: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(2L, 2L) bool attention pattern of the one-pass input [x_t, x_0].

    Noisy block b sees noisy block b and clean blocks < b; clean block b sees clean blocks <= b.
    """
    block = torch.arange(length, device=device) // block_size
    same = block[:, None] == block[None, :]
    earlier = block[:, None] > block[None, :]
    noisy_queries = torch.cat((same, earlier), dim=1)
    clean_queries = torch.cat((torch.zeros_like(same), same | earlier), dim=1)
    return torch.cat((noisy_queries, clean_queries), dim=0)


class BlockDiffusion(MaskedDiffusion):
    """Masked diffusion within blocks of ``block_size`` tokens, autoregressive across blocks."""

    name = "block"
    noise_conditioning = "none"
    causal = False
    generates_past_context = True  # the sampler slides its window block by block

    def __init__(
        self,
        *args: Any,
        block_size: int = 4,
        clip_min: float | None = None,
        clip_max: float | None = None,
        **keywords: Any,
    ):
        super().__init__(*args, **keywords)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise DDLMError(f"process.block_size must be a whole number >= 1, got {block_size!r}")
        self.block_size = block_size
        self.training_block_size: int | None = None  # in training, while the block size grows (adaptation)
        self.clip_min, self.clip_max = clip_min, clip_max
        low, high = self.clip_range
        if not 0 < low < high <= 1:
            raise DDLMError(
                f"the clipped noise range [{low:g}, {high:g}] must satisfy 0 < clip_min < clip_max <= 1; "
                "fix process.clip_min / process.clip_max"
            )
        if self.estimator == "count" and (clip_min is not None or clip_max is not None):
            raise DDLMError(
                "process.clip_min / process.clip_max clip the noise level t, which the count estimator never draws "
                "(it draws how many tokens to mask); set process.estimator=time or remove the clip"
            )

    @classmethod
    def from_config(cls, config: dict[str, Any], vocab: Vocabulary) -> BlockDiffusion:
        """The process ``config`` describes: the masked process's keys plus block_size, clip_min, clip_max."""
        masked = MaskedDiffusion.from_config(config, vocab)
        return cls(masked.schedule, mask_id=vocab.mask_id, pad_id=vocab.pad_id, eps=masked.eps,
                   antithetic=masked.antithetic, estimator=masked.estimator, eos_id=vocab.eos_id,
                   block_size=config.get("block_size", 4), clip_min=config.get("clip_min"),
                   clip_max=config.get("clip_max"))

    @property
    def clip_range(self) -> tuple[float, float]:
        """The training range of t: [clip_min, clip_max], each defaulting to the full [eps, 1]."""
        return (self.eps if self.clip_min is None else self.clip_min, 1.0 if self.clip_max is None else self.clip_max)

    def block_times(
        self, count: int, device: torch.device, generator: torch.Generator | None, clipped: bool
    ) -> torch.Tensor:
        """``count`` times, one per block: in [eps, 1], or in the clipped range when ``clipped``."""
        return self.sample_times(count, device, generator, self.clip_range if clipped else None)

    def check_length(self, length: int, block_size: int | None = None) -> None:
        if length % (block_size or self.block_size):
            raise DDLMError(
                f"sequence length {length} is not a multiple of process.block_size={self.block_size}; "
                "choose a block size that divides data.context_length"
            )

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """One Monte-Carlo draw of the NELBO per real token: a masked NELBO draw per block, in one pass.

        In training mode with a clip range the times are clipped, and while ``training_block_size``
        is set the blocks have that size (see the module notes).
        """
        nelbo = self.nelbo_draw(model, x0, x0 != self.pad_id, generator).sum()
        return LossOutput.per_real_token(nelbo, x0, self.pad_id)

    def nelbo_draw(
        self, model: torch.nn.Module, x0: torch.Tensor, maskable: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One NELBO draw per row (B,) in nats, of the ``maskable`` positions given the others, in one pass:
        each block's maskable positions at the block's own time. In fine-tuning (``sft_loss``, inherited)
        the prompt is clean context: whole earlier blocks, and the start of the block the response begins in."""
        batch, length = x0.shape
        size = self.training_block_size if model.training and self.training_block_size else self.block_size
        self.check_length(length, size)
        blocks = x0.reshape(-1, size)  # one row per block, in reading order
        maskable = maskable.reshape(-1, size)
        if self.estimator == "count":
            xt_blocks, weight = self.corrupt_by_count(blocks, generator, maskable)
        else:
            t = self.block_times(blocks.shape[0], x0.device, generator, clipped=model.training)
            xt_blocks = self.corrupt(blocks, t, generator, maskable)
        xt = xt_blocks.view(batch, length)
        positions = torch.arange(length, device=x0.device).repeat(2)
        attention = training_attention(length, size, x0.device)
        tokens = torch.cat((xt, x0), dim=1)
        shifted = getattr(unwrapped(model), "shifted", False)
        inputs = {"inputs": self.shifted_inputs(unwrapped(model), xt, x0, size)} if shifted else {}
        logits = model(tokens, attention=attention, positions=positions, **inputs)[:, :length]
        nll = self.masked_nll(logits, x0, xt).view(-1, size)
        nelbo = weight * nll.sum(dim=1) if self.estimator == "count" else self.nelbo_per_sequence(nll, t)
        return nelbo.view(batch, -1).sum(dim=1)

    def shifted_inputs(self, model: torch.nn.Module, xt: torch.Tensor, x0: torch.Tensor, block_size: int) -> torch.Tensor:
        """What a shifted model reads in the one-pass layout [x_t, x_0]: each position the token before it,
        clean at the first position of every block (the last token of the finished block before it)."""
        clean = model.shifted_inputs(x0)
        block_start = torch.arange(x0.shape[1], device=x0.device) % block_size == 0
        noisy = torch.where(block_start, clean, model.shifted_inputs(xt))
        return torch.cat((noisy, clean), dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "name": self.name, "block_size": self.block_size,
                "clip_min": self.clip_min, "clip_max": self.clip_max}
