"""What samplers yield and return: one step object per change of the canvas, and the final output."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ddlm.samplers.canvas import Canvas

MASK_GLYPH = "░"  # how a masked position shows in SamplerStep.canvas_texts (and in the terminal view)


@dataclass
class SamplerStep:
    """The canvas after one step of a sampler.

    ``noise`` has one meaning for every process and policy: the fraction of the generated
    positions that are still noise after this step, averaged over the samples of the batch,
    falling to 0 after the last step. Noise is MASK for masked diffusion and SEDD absorbing,
    and a position not yet written for the autoregressive model (the canvas shows MASK
    there). SEDD uniform has no mask and a resampled token looks like any other, so its
    noise is the forward process's resampling probability at the step's time,
    1 - exp(-sigma_bar(t)) (0 after the final denoising step), which for the absorbing graph
    is the expected masked fraction.

    :meth:`ddlm.DiffusionPipeline.stream` fills the last five fields.
    """

    index: int  # steps before this one in this batch
    tokens: torch.Tensor  # (B, L) token ids after the step; MASK where still masked, PAD after a row's end
    revealed: torch.Tensor  # (B, L) bool: positions given a new token by this step
    remasked: torch.Tensor  # (B, L) bool: positions masked again by this step (ReMDM)
    confidence: torch.Tensor | None  # (B, L) float32 model probability of each token drawn this step, NaN elsewhere
    noise: float
    model_calls: int  # model calls so far in this batch
    texts: list[str] | None = None  # the pipeline's decoded text of each sample (masked positions left out)
    canvas_texts: list[str] | None = None  # the same with each masked position shown as MASK_GLYPH: the canvas
    first_sample: int = 0  # index of the batch's first sample among all samples of the run
    canvas: Canvas | None = None  # the batch's canvas: which positions are given, generated, padding
    seed: int | None = None  # the run's seed (drawn when none was given)

    @property
    def changed(self) -> torch.Tensor:
        """(B, L) bool: positions this step revealed or masked again."""
        return self.revealed | self.remasked


@dataclass
class SampleOutput:
    """The final tokens of a run, what it cost, and how to repeat it."""

    tokens: torch.Tensor  # (B, L) final token ids
    model_calls: int
    canvas: Canvas  # what was asked for: given, generated and padding positions
    seed: int

    @classmethod
    def of_step(cls, step: SamplerStep) -> SampleOutput:
        """The output of a run whose last step is ``step`` (as yielded by the pipeline: canvas and seed set)."""
        return cls(tokens=step.tokens, model_calls=step.model_calls, canvas=step.canvas, seed=step.seed)

    @classmethod
    def of_stream(cls, steps: Iterable[SamplerStep], pad_id: int) -> SampleOutput:
        """The output of a pipeline's stream (or of the last steps of its batches): the batches joined."""
        return cls.concatenate([cls.of_step(step) for step in last_steps(steps)], pad_id)

    @classmethod
    def concatenate(cls, outputs: list[SampleOutput], pad_id: int) -> SampleOutput:
        """Batches of one run joined into one output, narrower batches padded on the right."""
        if len(outputs) == 1:
            return outputs[0]
        width = max(output.tokens.shape[1] for output in outputs)

        def join(tensors: list[torch.Tensor], fill: int | bool) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill) for t in tensors])

        canvas = Canvas(
            join([output.canvas.tokens for output in outputs], pad_id),
            join([output.canvas.generated for output in outputs], False),
            join([output.canvas.active for output in outputs], False),
        )
        tokens = join([output.tokens for output in outputs], pad_id)
        return cls(tokens, sum(output.model_calls for output in outputs), canvas, outputs[0].seed)


def last_steps(steps: Iterable[SamplerStep]) -> Iterator[SamplerStep]:
    """The last step of each batch of a pipeline's stream (batches are told apart by ``first_sample``)."""
    last = None
    for step in steps:
        if last is not None and step.first_sample != last.first_sample:
            yield last
        last = step
    if last is not None:
        yield last


def changes_only(steps: Iterable[SamplerStep]) -> Iterator[SamplerStep]:
    """The steps that changed the canvas, and the last step of each batch (its model calls are the batch's total)."""
    pending = None
    for step in steps:
        if pending is not None and (bool(pending.changed.any()) or step.first_sample != pending.first_sample):
            yield pending
        pending = step
    if pending is not None:
        yield pending


def masked_fraction(tokens: torch.Tensor, generated: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(B,) float64: the fraction of each row's generated positions that hold MASK."""
    masked = ((tokens == mask_id) & generated).sum(dim=1).double()
    return masked / generated.sum(dim=1).clamp_min(1)
