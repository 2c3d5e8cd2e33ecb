"""Sampling from block diffusion models: blocks left to right, any masked policy inside a block.

Blocks are the columns [k * block_size, (k + 1) * block_size) of the canvas, as in training.
Each block with positions to generate is filled by the masked-diffusion sampler of
``ddlm.samplers.masked`` (ancestral, first-hitting, confidence, margin, entropy, random,
threshold; ReMDM remasking) while the model sees the clean blocks before it. With
``use_cache`` the keys and values of those blocks come from a KV cache: they are exact,
since a clean block attends only to itself and to earlier blocks, so cached and uncached
sampling compute the same logits. The finished block enters the cache in the same model call
as the first step of the next block. A step whose block is unchanged reuses the last logits
(the model does not see the noise level).

- Variable length: once a block is finished, a row whose generated positions in it hold
  end-of-text ends there: its later generated positions become PAD and are not sampled; the
  run stops when every row has ended.
- Longer than the context: the model's window slides block by block (the earliest blocks
  leave it; the cache is then rebuilt from the window).
- Prompts, and infilling where the given text after a gap lies in the gap's own block(s): a
  block sees only itself and earlier blocks, so given text in a block after the last
  generated one is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ddlm.errors import DDLMError
from ddlm.processes.block import BlockDiffusion, block_causal_attention
from ddlm.samplers.canvas import Canvas
from ddlm.samplers.masked import MaskedSampler
from ddlm.samplers.options import SamplerOptions
from ddlm.samplers.randomness import block_seed
from ddlm.samplers.step import SamplerStep, masked_fraction

# The SamplerOptions fields this sampler reads besides the common ones: the masked policies inside each block.
BLOCK_OPTIONS = ("policy", "threshold", "entropy_bound", "remask", "remask_eta", "min_length")


class BlockContext:
    """Calls the model for the current block, which sees the clean blocks before it in a window
    of at most the model's context (whole blocks); counts the calls.

    With ``use_cache``, the window's finished blocks live in a KV cache and each call feeds only
    the blocks not yet cached plus the current one; without it, every call feeds the whole window.
    """

    def __init__(self, model: torch.nn.Module, canvas: Canvas, block_size: int, use_cache: bool):
        self.model = model
        self.block_size = block_size
        self.active = canvas.active if canvas.key_mask is not None else None
        self.window_width = model.context_length // block_size * block_size
        self.cache = model.new_cache(canvas.batch_size) if use_cache else None
        self.window = 0  # first column the model sees
        self.cached_end = 0  # columns [window, cached_end) are in the cache
        self.uncached: torch.Tensor | None = None  # the clean columns the next call still has to feed
        self.start = 0
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (block tokens, logits) of the last call
        self.calls = 0

    def start_block(self, x: torch.Tensor, start: int) -> None:
        """The block at columns [start, start + block_size) of ``x`` is next; the columns before it are final."""
        end = start + self.block_size
        if end - self.window > self.window_width:
            self.window = end - self.window_width
            self.cached_end = self.window
        first_new = self.cached_end if self.cache is not None else self.window
        self.uncached = x[:, first_new:start].clone()
        self.start = start
        self.last = None

    def __call__(self, block: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, block_size, V) of the current block holding ``block`` (B, block_size); ``noise`` is unused."""
        if self.last is not None and torch.equal(block, self.last[0]):
            return self.last[1]
        end = self.start + self.block_size
        first = self.start - self.uncached.shape[1]
        columns = torch.arange(self.window, end, device=block.device)
        attention = block_causal_attention(columns[first - self.window :], columns, self.block_size)
        key_mask = None if self.active is None else visible_keys(self.active[:, self.window : end])
        tokens = torch.cat((self.uncached, block), dim=1)
        if self.cache is None:
            logits = self.model(tokens, attention=attention, key_mask=key_mask)
        else:
            self.cache.length = first - self.window
            logits = self.model(tokens, cache=self.cache, attention=attention, key_mask=key_mask)
            self.cache.length = self.start - self.window  # keep the clean blocks, forget the noisy one
            self.cached_end, self.uncached = self.start, self.uncached[:, :0]
            self.last = (block.clone(), logits[:, -self.block_size :])
        self.calls += 1
        return logits[:, -self.block_size :]


def visible_keys(active: torch.Tensor) -> torch.Tensor:
    """The key mask of a window: its active positions, or every position for a row with none
    (a row that ended before the window; its outputs are unused, and SDPA needs one key)."""
    return active | ~active.any(dim=1, keepdim=True)


def whole_blocks(canvas: Canvas, block_size: int, pad_id: int) -> Canvas:
    """``canvas`` with inactive PAD columns on the right up to a multiple of ``block_size``, so that every
    block has the same width."""
    extra = -canvas.width % block_size
    return Canvas(F.pad(canvas.tokens, (0, extra), value=pad_id), F.pad(canvas.generated, (0, extra), value=False),
                  F.pad(canvas.active, (0, extra), value=False))


def steps_per_block(steps: int, block_size: int, longest: int) -> int:
    """The step budget ``steps`` for a sample's ``longest`` generated positions, given to each block in
    proportion to its width (at least one step), the same for every block and every batch."""
    return max(1, round(steps * block_size / longest))


def check_canvas(canvas: Canvas, block_size: int) -> None:
    """Refuse given tokens in a block after a row's last generated block: a block-causal model never sees them."""
    columns = torch.arange(canvas.width, device=canvas.tokens.device)
    last_generated = torch.where(canvas.generated, columns, -1).max(dim=1).values
    last_block_end = (last_generated // block_size + 1) * block_size
    unseen = canvas.fixed & (columns[None, :] >= last_block_end[:, None])
    if bool(unseen.any()):
        raise DDLMError(
            f"given text after the last generated block is never seen by a block diffusion model (blocks of "
            f"{block_size} tokens, each seeing only earlier blocks); put the gap in the last block(s) or use a masked model",
            field="suffix")


class BlockSampler:
    """The state of one block-diffusion sampling run; :func:`block_steps` is its entry point."""

    def __init__(
        self, model: torch.nn.Module, process: BlockDiffusion, canvas: Canvas, options: SamplerOptions, first_row: int,
    ):
        self.size = process.block_size
        self.width = canvas.width  # the caller's canvas; the sampler's is padded to whole blocks
        canvas = whole_blocks(canvas, self.size, process.pad_id)
        self.model, self.process, self.canvas, self.options, self.first_row = model, process, canvas, options, first_row
        self.x = canvas.tokens.masked_fill(canvas.generated, process.mask_id)
        self.generated = canvas.generated.clone()  # shrinks as rows end
        self.context = BlockContext(model, canvas, self.size, options.use_cache)
        self.no_eos = canvas.generated & (canvas.generated_rank() < options.min_length)
        self.steps_done = 0

    def block_columns(self) -> list[int]:
        """First column of every block that holds a position to generate."""
        starts = range(0, self.canvas.width, self.size)
        return [start for start in starts if bool(self.generated[:, start : start + self.size].any())]

    def fill(self, start: int, steps: int, block_index: int) -> Iterator[SamplerStep]:
        """Generate the block at columns [start, start + size) with the options' masked policy."""
        columns = slice(start, start + self.size)
        self.context.start_block(self.x, start)
        sub_canvas = Canvas(self.x[:, columns].clone(), self.generated[:, columns].clone(), self.canvas.active[:, columns])
        options = dataclasses.replace(self.options, seed=block_seed(self.options.seed, block_index))
        inner = MaskedSampler(self.model, self.process, sub_canvas, options, self.first_row)
        inner.caller = self.context
        inner.no_eos = self.no_eos[:, columns] if bool(self.no_eos[:, columns].any()) else None
        for step in inner.fill(sub_canvas.generated, steps, whole_canvas=True):  # each block from t = 1 to 0
            yield self.widen(step, columns)
        if self.end_rows(columns):
            yield self.widen(None, columns)

    def widen(self, step: SamplerStep | None, columns: slice) -> SamplerStep:
        """The block's step as a step of the whole canvas; None: the step that ended rows (PAD written)."""
        revealed, remasked = torch.zeros_like(self.generated), torch.zeros_like(self.generated)
        confidence = None
        if step is not None:
            self.x[:, columns] = step.tokens
            revealed[:, columns], remasked[:, columns] = step.revealed, step.remasked
            if step.confidence is not None:
                confidence = torch.full(self.x.shape, torch.nan, dtype=torch.float32, device=self.x.device)
                confidence[:, columns] = step.confidence
        shown = slice(0, self.width)
        wide = SamplerStep(
            self.steps_done, self.x[:, shown].clone(), revealed[:, shown], remasked[:, shown],
            None if confidence is None else confidence[:, shown],
            float(masked_fraction(self.x, self.canvas.generated, self.process.mask_id).mean()), self.context.calls,
        )
        self.steps_done += 1
        return wide

    def end_rows(self, columns: slice) -> bool:
        """End the rows that generated end-of-text in the finished block: PAD at their later generated
        positions, which are not sampled. Whether any row has more positions to end."""
        ended = ((self.x[:, columns] == self.process.eos_id) & self.generated[:, columns]).any(dim=1)
        rest = self.generated & ended[:, None]
        rest[:, : columns.stop] = False
        if not bool(rest.any()):
            return False
        self.x[rest] = self.process.pad_id
        self.generated &= ~rest
        return True


@torch.no_grad()
def block_steps(
    model: torch.nn.Module, process: BlockDiffusion, canvas: Canvas, options: SamplerOptions, first_row: int = 0
) -> Iterator[SamplerStep]:
    """Fill the MASK positions of ``canvas`` block by block, one yielded step per change.

    ``options.steps`` is the step budget for all generated positions; each block gets its share
    (at least one step; see :func:`steps_per_block`); ``first-hitting`` ignores it. ``min_length``:
    the first ``min_length`` generated positions cannot be end-of-text. Given positions never
    change; no MASK survives. Sample i depends only on (seed, first_row + i).
    """
    fewest = int(canvas.generated.sum(dim=1).min())
    if options.min_length > fewest:
        raise DDLMError(f"min_length {options.min_length} exceeds the {fewest} generated positions; lower it",
                        field="min_length")
    if process.block_size > model.context_length:
        raise DDLMError(f"block size {process.block_size} exceeds the model's context {model.context_length}")
    device = next(model.parameters()).device
    canvas = Canvas(canvas.tokens.to(device), canvas.generated.to(device), canvas.active.to(device))
    check_canvas(canvas, process.block_size)
    sampler = BlockSampler(model, process, canvas, options, first_row)
    steps = steps_per_block(options.steps, process.block_size, int(canvas.generated.sum(dim=1).max()))
    for start in sampler.block_columns():
        if not bool(sampler.generated[:, start:].any()):
            return  # every row has ended
        yield from sampler.fill(start, steps, start // process.block_size)
