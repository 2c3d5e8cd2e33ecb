"""Sampling from masked diffusion models: one loop, composed from small policies.

A *policy* picks which masked positions a step reveals:

- ``ancestral``: each masked position is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t)
  on the step t -> s (the exact reverse process); optional ReMDM remasking.
- ``first-hitting``: one position per model call, at the exact next reveal time (Zheng et al.).
- ``confidence`` / ``margin`` / ``entropy`` / ``random``: every masked position gets a token and a
  score; each step reveals the best-scored ones, as many as the step schedule says (LLaDA).
- ``threshold``: as ``confidence``, and also every position whose drawn token has probability
  above ``threshold`` (Fast-dLLM), so confident steps reveal many tokens at once. A threshold
  also combines with the other ranked policies (``random`` + threshold: random positions on
  schedule, plus every confident one).
- an *entropy bound* gamma (EB-sampler, Ben-Hamu et al. 2025) with any ranked policy: each step
  also reveals the longest run of best-ranked positions whose predictive entropies, summed
  less the largest, stay within gamma (so gamma = 0 keeps the schedule, and a model sure of
  every position fills the canvas in one call).

A *block schedule* (``block_length``) makes any policy semi-autoregressive: the generated
positions are filled block by block, left to right, with the step budget split over blocks.
*Caching*: a time-agnostic model is not called again when no token changed;
``prefix_cache`` reuses the keys/values of positions left of the current block and
``dual_cache`` also those right of it, both refreshed at each block's first call (Fast-dLLM;
approximations under bidirectional attention: the benchmark reports their effect).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ddlm.errors import DDLMError
from ddlm.processes.masked import MaskedDiffusion
from ddlm.samplers.canvas import Canvas
from ddlm.samplers.options import SamplerOptions
from ddlm.samplers.policies import (
    DEFAULT_THRESHOLD,
    blocks,
    confidence_scores,
    entropy_bounded_counts,
    predictive_entropy,
    ranking,
    remask_probability,
    reveal_counts,
    split_evenly,
    top_k_per_row,
)
from ddlm.samplers.randomness import RowRandom, block_seed
from ddlm.samplers.step import SamplerStep, masked_fraction

# The SamplerOptions fields this sampler reads besides the common ones (see ddlm.families).
MASKED_OPTIONS = ("policy", "block_length", "threshold", "entropy_bound", "remask", "remask_eta", "prefix_cache",
                  "dual_cache", "min_length")


@dataclass
class RowGroup:
    """Rows of a batch that share one block boundary, called together against their own key/value cache."""

    rows: torch.Tensor  # (G,) long: the rows
    prefix: int  # after the block's first call, columns from ``prefix`` on are recomputed ...
    end: int  # ... up to ``end``
    key_mask: torch.Tensor | None  # (G, L) the rows' own positions, None when none is padded
    cache: Any = None  # made by the block's first call
    logits: torch.Tensor | None = None  # (G, L, V) of the last call

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor, dual: bool) -> torch.Tensor:
        """Logits (G, L, V) of the group's rows of ``x`` (B, L) at noise levels ``noise`` (B,)."""
        x, noise = x[self.rows], noise[self.rows]
        if self.cache is None:  # the block's first call runs the whole canvas and fills the cache
            self.cache = model.new_cache(len(self.rows))
            if dual:
                self.cache.keep_to = x.shape[1]  # every stored position stays visible: prefix, block and suffix
            self.logits = model(x, noise, cache=self.cache, key_mask=self.key_mask)
        else:
            self.cache.length = self.prefix
            self.logits = self.logits.clone()
            self.logits[:, self.prefix : self.end] = model(
                x[:, self.prefix : self.end], noise, cache=self.cache, key_mask=self.key_mask)
        return self.logits


class ModelCaller:
    """Calls the model for the sampler and counts the calls.

    Reuses the last logits when the canvas has not changed and the model does not see the
    noise level. With a prefix cache, only a row's positions from its first position in the
    block on are recomputed after the first call of a block; with a dual cache, only the
    row's block columns, which also see the cached keys/values right of the block. The first
    call of each block runs the whole canvas and refreshes the cache. Boundaries are per row:
    rows that share them are called together, so no row's logits depend on its neighbours.
    """

    def __init__(self, model: torch.nn.Module, canvas: Canvas, reuse: bool, prefix_cache: bool, dual_cache: bool = False):
        self.model = model
        self.key_mask = canvas.key_mask
        self.reuse = reuse and not model.uses_noise
        self.cached = prefix_cache or dual_cache
        self.dual = dual_cache
        probe = model.new_cache(1) if self.cached else None  # a model without a cache refuses here
        if dual_cache and not probe.keeps_suffix:
            raise DDLMError("this model's key/value cache holds a prefix only; drop dual_cache", field="dual_cache")
        self.groups: list[RowGroup] = []
        self.logits: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        self.calls = 0

    def start_block(self, block: torch.Tensor) -> None:
        """With a cache: each row's positions left of its first position in ``block`` (B, L) become its
        cached prefix (and, with a dual cache, those right of its last position its cached suffix)."""
        if not self.cached:
            return
        width = block.shape[1]
        in_block = block.any(dim=1)
        prefix = torch.where(in_block, block.long().argmax(dim=1), 0)
        last = torch.where(block, torch.arange(width, device=block.device), -1).max(dim=1).values
        end = torch.where(in_block, last + 1, width) if self.dual else torch.full_like(prefix, width)
        bounds, group_of = torch.stack((prefix, end), dim=1).unique(dim=0, return_inverse=True)
        self.groups = []
        for group, (first, stop) in enumerate(bounds.tolist()):
            rows = (group_of == group).nonzero()[:, 0]
            key_mask = None if self.key_mask is None or bool(self.key_mask[rows].all()) else self.key_mask[rows]
            self.groups.append(RowGroup(rows, first, stop, key_mask))

    def __call__(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.reuse and self.seen is not None and torch.equal(x, self.seen):
            return self.logits
        if not self.cached:
            logits = self.model(x, noise, key_mask=self.key_mask)
        elif len(self.groups) == 1:
            logits = self.groups[0](self.model, x, noise, self.dual)
        else:
            parts = [group(self.model, x, noise, self.dual) for group in self.groups]
            logits = parts[0].new_empty((x.shape[0], *parts[0].shape[1:]))
            for group, part in zip(self.groups, parts):
                logits[group.rows] = part
        self.calls += 1
        self.logits, self.seen = logits, x.clone()
        return logits


class MaskedSampler:
    """The state of one masked-diffusion sampling run; :func:`masked_steps` is its entry point."""

    def __init__(
        self, model: torch.nn.Module, process: MaskedDiffusion, canvas: Canvas, options: SamplerOptions, first_row: int,
    ):
        self.model, self.process, self.canvas, self.options, self.first_row = model, process, canvas, options, first_row
        self.x = canvas.tokens.masked_fill(canvas.generated, process.mask_id)
        self.random = RowRandom(options.seed, canvas.active, first_row)
        self.caller = ModelCaller(model, canvas, options.use_cache, options.prefix_cache, options.dual_cache)
        self.steps_done = 0
        min_length = options.min_length
        self.no_eos = canvas.generated & (canvas.generated_rank() < min_length) if min_length > 0 else None

    # ----- shared pieces -----

    def masked_in(self, block: torch.Tensor) -> torch.Tensor:
        return (self.x == self.process.mask_id) & block

    def masked_fraction(self) -> torch.Tensor:
        """(B,) fraction of each row's generated positions still masked: the noise level of the canvas."""
        return masked_fraction(self.x, self.canvas.generated, self.process.mask_id)

    def start_block(self, block: torch.Tensor, index: int) -> None:
        """Open block ``index`` (its positions ``block`` (B, L)): each row's cache boundaries and, under a
        block schedule, fresh random streams seeded by (seed, block) as in block diffusion, so a row's
        draws in a block never depend on how many steps its neighbours needed in earlier blocks."""
        self.caller.start_block(block)
        if self.options.block_length is not None:
            self.random = RowRandom(block_seed(self.options.seed, index), self.canvas.active, self.first_row)

    def predict(self, mask_probability: torch.Tensor) -> torch.Tensor:
        """The model's logits (B, L, V) for the canvas at mask probabilities ``mask_probability`` (B,)."""
        return self.caller(self.x, mask_probability.to(self.x.device, torch.float32))

    def log_probs(self, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """log p(x0 | x_t) (N, V) in float64 at ``positions`` (B, L), with EOS forbidden before ``min_length``.

        The process says which tokens are possible (where its log-probabilities are -inf); the
        softmax over them runs in float64, so the scores that rank positions carry no float32
        rounding, which differs between CPUs' vector instructions.
        """
        selected = logits[positions]
        impossible = self.process.log_probs(selected).isneginf()
        if self.no_eos is not None and self.process.eos_id is not None:
            impossible[:, self.process.eos_id] |= self.no_eos[positions]
        return selected.double().masked_fill(impossible, -torch.inf).log_softmax(dim=-1)

    def draw(self, log_probs: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (N,) drawn from ``log_probs`` (N, V) at ``positions`` (B, L), and the probability of each."""
        tokens = self.random.categorical(log_probs, positions.nonzero()[:, 0], self.options)
        return tokens, log_probs.gather(-1, tokens[:, None])[:, 0].exp()

    def take_step(
        self, reveal: torch.Tensor, tokens: torch.Tensor, confidence: torch.Tensor, remasked: torch.Tensor | None = None,
    ) -> SamplerStep:
        """Write ``tokens`` at ``reveal`` (B, L), mask ``remasked`` again, and describe the step."""
        self.x[reveal] = tokens
        remasked = torch.zeros_like(reveal) if remasked is None else remasked
        self.x[remasked] = self.process.mask_id
        step = SamplerStep(
            self.steps_done, self.x.clone(), reveal.clone(), remasked.clone(), confidence,
            float(self.masked_fraction().mean()), self.caller.calls,
        )
        self.steps_done += 1
        return step

    def full_confidence(self, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(B, L) float32: ``values`` at ``positions``, NaN elsewhere."""
        confidence = torch.full(self.x.shape, torch.nan, dtype=torch.float32, device=self.x.device)
        confidence[positions] = values.float()
        return confidence

    # ----- policies -----

    def fill(self, block: torch.Tensor, steps: int, whole_canvas: bool) -> Iterator[SamplerStep]:
        """Reveal the masked positions of ``block`` (B, L) in ``steps`` steps with the options' policy
        (first-hitting: one position per call); the threshold defaults to 0.9 for the threshold policy."""
        options = self.options
        if options.policy == "ancestral":
            return self.ancestral(block, steps, whole_canvas, options.remask, options.remask_eta)
        if options.policy == "first-hitting":
            return self.first_hitting(block, whole_canvas)
        threshold = options.threshold
        if options.policy == "threshold" and threshold is None:
            threshold = DEFAULT_THRESHOLD
        return self.ranked(block, steps, options.policy, threshold)

    def ancestral(
        self, block: torch.Tensor, steps: int, whole_canvas: bool, remask: str | None, eta: float
    ) -> Iterator[SamplerStep]:
        """The exact reverse step t -> s, optionally with ReMDM remasking of visible generated tokens."""
        schedule = self.process.schedule
        times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        for step in range(steps):
            t, s = times[step], times[step + 1]
            masked = self.masked_in(block)
            if remask is None and not masked.any():
                return
            if whole_canvas:
                mask_probability = self.process.mask_probability(t).expand(self.canvas.batch_size)
            else:
                mask_probability = self.masked_fraction()
            logits = self.predict(mask_probability)
            alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
            remasked = None
            if remask is not None:
                sigma = remask_probability(remask, eta, alpha_t, alpha_s)
                visible = block & ~masked
                remasked = visible & (self.random.positional() < sigma)
                reveal_probability = ((alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t)).clamp(0, 1)
            else:
                reveal_probability = self.process.reveal_probability(t, s)
            uniform = self.random.positional()  # drawn at the last step too: the stream stays aligned
            reveal = masked if step == steps - 1 else masked & (uniform < reveal_probability)
            tokens, probs = self.draw(self.log_probs(logits, reveal), reveal)
            yield self.take_step(reveal, tokens, self.full_confidence(reveal, probs), remasked)

    def first_hitting(self, block: torch.Tensor, whole_canvas: bool) -> Iterator[SamplerStep]:
        """One position per call, chosen uniformly among the masked ones, at the exact next reveal time.

        With n masked positions at mask probability p, the next reveal happens at mask
        probability p * u^(1/n), u ~ U(0, 1) (for alpha = 1 - t this is time t * u^(1/n)).
        """
        mask_probability = self.masked_fraction()
        while True:
            masked = self.masked_in(block)
            remaining = masked.sum(dim=1)
            if not remaining.any():
                return
            logits = self.predict(mask_probability if whole_canvas else self.masked_fraction())
            u = self.random.uniform(1)[:, 0]
            next_reveal = mask_probability * u ** (1.0 / remaining.clamp_min(1).double())
            mask_probability = torch.where(remaining > 0, next_reveal, mask_probability)
            pick = self.random.positional().masked_fill(~masked, -1.0)
            reveal = masked & (pick == pick.max(dim=1, keepdim=True).values)
            tokens, probs = self.draw(self.log_probs(logits, reveal), reveal)
            yield self.take_step(reveal, tokens, self.full_confidence(reveal, probs))

    def ranked(self, block: torch.Tensor, steps: int, policy: str, threshold: float | None) -> Iterator[SamplerStep]:
        """Reveal the best-scored masked positions (the step schedule's count, or more under the
        options' entropy bound), plus every position whose drawn token has probability above
        ``threshold``."""
        counts = reveal_counts(self.masked_in(block).sum(dim=1), steps)
        for step in range(steps):
            masked = self.masked_in(block)
            remaining = masked.sum(dim=1)
            if not remaining.any():
                return
            log_probs = self.log_probs(self.predict(self.masked_fraction()), masked)
            tokens, probs = self.draw(log_probs, masked)
            uniform = self.random.positional()
            scores = torch.full(self.x.shape, -torch.inf, dtype=torch.float64, device=self.x.device)
            scores[masked] = confidence_scores(policy, log_probs, tokens, uniform[masked])
            wanted = remaining if step == steps - 1 else counts[:, step]
            if threshold is not None:
                wanted = wanted.clamp_min(1)
            order = ranking(scores, masked)
            if self.options.entropy_bound is not None:
                entropy = torch.zeros_like(scores)
                entropy[masked] = predictive_entropy(log_probs)
                wanted = torch.maximum(wanted, entropy_bounded_counts(order, masked, entropy, self.options.entropy_bound))
            reveal = top_k_per_row(order, masked, torch.minimum(wanted, remaining))
            confidence = self.full_confidence(masked, probs)
            if threshold is not None:
                reveal |= masked & (confidence > threshold)  # NaN (not a candidate) compares False
            yield self.take_step(reveal, tokens[reveal[masked]], confidence)


def masked_steps(
    model: torch.nn.Module, process: MaskedDiffusion, canvas: Canvas, options: SamplerOptions, first_row: int = 0
) -> Iterator[SamplerStep]:
    """Fill the MASK positions of ``canvas`` with the masked-diffusion model, one yielded step per change.

    ``options.steps`` is the total step budget, split evenly over blocks (remainder to the
    first blocks); ``first-hitting`` ignores it (one call per token). The threshold defaults
    to 0.9 for the threshold policy. ``min_length``: the first ``min_length`` generated
    positions cannot be end-of-text. Given positions never change; no MASK survives. Sample
    i depends only on (seed, first_row + i), not on how many samples are drawn with it.
    A canvas the options do not fit raises here, before the first step.
    """
    fewest = int(canvas.generated.sum(dim=1).min())
    if options.min_length > fewest:
        raise DDLMError(f"min_length {options.min_length} exceeds the {fewest} generated positions; lower it",
                        field="min_length")
    device = next(model.parameters()).device
    canvas = Canvas(canvas.tokens.to(device), canvas.generated.to(device), canvas.active.to(device))
    block_masks = blocks(canvas, options.block_length)
    if options.steps < len(block_masks) and options.policy != "first-hitting":
        raise DDLMError(
            f"{options.steps} steps cannot cover {len(block_masks)} blocks; use at least one step per block",
            field="steps")
    return fill_blocks(MaskedSampler(model, process, canvas, options, first_row), block_masks, options.steps)


@torch.no_grad()
def fill_blocks(sampler: MaskedSampler, block_masks: list[torch.Tensor], steps: int) -> Iterator[SamplerStep]:
    """The steps of ``sampler`` over the blocks, left to right, with the step budget split evenly."""
    whole_canvas = len(block_masks) == 1
    for index, (block, block_steps) in enumerate(zip(block_masks, split_evenly(steps, len(block_masks)))):
        sampler.start_block(block, index)
        yield from sampler.fill(block, block_steps, whole_canvas)
