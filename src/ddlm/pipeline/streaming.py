"""Generation as a stream of steps: options and canvas rows checked once, samples drawn batch after batch,
each step with its texts; ``sample`` and ``generate`` drain the stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ddlm.device import autocast
from ddlm.families import get_family, sampler_steps
from ddlm.pipeline.canvas import CanvasBuilding
from ddlm.samplers import Canvas, SampleOutput, SamplerOptions, SamplerStep, changes_only, last_steps
from ddlm.schema import check_integer
from ddlm.samplers.step import MASK_GLYPH

DEFAULT_BATCH_SIZE = 64  # samples drawn at once


class Streaming(CanvasBuilding):
    """The part of :class:`~ddlm.pipeline.DiffusionPipeline` that generates, on the canvases it lays out."""

    sampling_model: torch.nn.Module
    sampler_options: Callable[..., SamplerOptions]
    precision: str
    device: torch.device

    def stream(
        self,
        prompt: str | list[str] | None = None,
        options: SamplerOptions | None = None,
        *,
        num_samples: int = 1,
        length: int | None = None,
        infill: str | None = None,
        suffix: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        stop_at_eos: bool = True,
        texts: bool = True,
        chat: bool = False,
        **option_keywords: Any,
    ) -> Iterator[SamplerStep]:
        """One :class:`SamplerStep` per change of the canvas, with each sample's text so far (unless not ``texts``).

        ``prompt``: text the samples start with, or a list of them (``num_samples`` samples of
        each). ``infill``: a template such as ``"The [MASK*5] sat on the [MASK] mat"`` instead
        of a prompt. ``suffix``: text fixed after the generated positions. ``chat``: each prompt
        is a user turn in the tokenizer's chat template (Hugging Face chat models). ``options``: a
        :class:`SamplerOptions`, taken as it is; keywords (``steps=64, policy="confidence"``, any
        field of it) replace its fields, or without ``options`` those of the model's sampler
        defaults (:meth:`sampler_options`). Samples are drawn ``batch_size`` at a time, batch
        after batch (a step's ``first_sample`` says which); sample i is the same for every
        batch size. Without a seed one is drawn and reported in every step's ``seed``.
        Bad input raises here, before the first step.
        """
        base = options if options is not None else self.sampler_options()
        options = self.checked_options(SamplerOptions.build(base, **option_keywords), batch_size)
        rows = self.canvas_rows(prompt, num_samples, length, infill, suffix, chat)
        return self.stream_rows(rows, options, batch_size=batch_size, stop_at_eos=stop_at_eos, texts=texts)

    def stream_rows(self, rows: list[list[int | None]], options: SamplerOptions, *, batch_size: int = DEFAULT_BATCH_SIZE,
                    stop_at_eos: bool = True, texts: bool = True) -> Iterator[SamplerStep]:
        """:meth:`stream` on canvas rows laid out already (:meth:`canvas_rows`): a caller that checked its text
        against its own limits need not tokenise it again."""
        options = self.checked_options(options, batch_size)
        steps = changes_only(self.run_batches(options, rows, batch_size))

        def with_texts() -> Iterator[SamplerStep]:
            for step in steps:
                if texts:
                    step.texts = [self.decode(step, row, stop_at_eos) for row in range(step.tokens.shape[0])]
                    step.canvas_texts = [self.decode(step, row, stop_at_eos, mask=MASK_GLYPH)
                                         for row in range(step.tokens.shape[0])]
                yield step

        return with_texts()

    def sample_batches(self, prompt: str | list[str] | None = None, options: SamplerOptions | None = None,
                       **arguments: Any) -> Iterator[SampleOutput]:
        """Each batch's :class:`SampleOutput` as soon as it is finished; arguments as in :meth:`stream`."""
        return (SampleOutput.of_step(step) for step in last_steps(self.stream(prompt, options, texts=False, **arguments)))

    def sample(self, prompt: str | list[str] | None = None, options: SamplerOptions | None = None,
               **arguments: Any) -> SampleOutput:
        """Token-level sampling of every sample (the batches joined); arguments as in :meth:`stream`.

        The output's ``canvas`` says which positions were generated, its ``seed`` repeats the run.
        """
        return SampleOutput.of_stream(self.stream(prompt, options, texts=False, **arguments), self.tokenizer.pad_id)

    def generate(self, prompt: str | list[str] | None = None, options: SamplerOptions | None = None,
                 stop_at_eos: bool = True, **arguments: Any) -> list[str]:
        """Texts (prompt included) of the samples; arguments as in :meth:`stream`.

        With ``stop_at_eos`` a generated end-of-text token ends its stretch of generated
        text: it and the generated tokens after it (up to the next given token) are dropped.
        """
        output = self.sample(prompt, options, **arguments)
        return [self.decode(output, row, stop_at_eos) for row in range(output.tokens.shape[0])]

    def checked_options(self, options: SamplerOptions, batch_size: int) -> SamplerOptions:
        """``options`` checked against this model's family, with a seed; the batch size checked."""
        get_family(self.process.name).check(options)
        check_integer("batch_size", batch_size, minimum=1)
        return options.with_seed()

    def run_batches(self, options: SamplerOptions, rows: list[list[int | None]], batch_size: int) -> Iterator[SamplerStep]:
        """The sampler's steps, batch after batch, each under the pipeline's precision only while it computes.

        The first batch's sampler is set up at once, so that its checks of the canvas raise
        before the first step (the batches share one layout).
        """

        def batch(first: int) -> tuple[Canvas, Iterator[SamplerStep]]:
            canvas = Canvas.from_rows(rows[first : first + batch_size], self.tokenizer.mask_id, self.tokenizer.pad_id,
                                      self.device)
            return canvas, sampler_steps(self.sampling_model, self.process, canvas, options, first)

        first_batch = batch(0)

        def steps() -> Iterator[SamplerStep]:
            for first in range(0, len(rows), batch_size):
                canvas, sampler = first_batch if first == 0 else batch(first)
                while True:
                    with autocast(self.device, self.precision):  # entered per step: nothing leaks past a yield
                        step = next(sampler, None)
                    if step is None:
                        break
                    step.first_sample, step.canvas, step.seed = first, canvas, options.seed
                    yield step

        return steps()

    def decode(self, output: SampleOutput | SamplerStep, row: int, stop_at_eos: bool = True,
               mask: str | None = None) -> str:
        """The text of sample ``row``: padding removed, cut at end-of-text as :meth:`generate` says, each masked
        position left out or, with ``mask``, shown as that text (``canvas_texts`` uses ``samplers.step.MASK_GLYPH``)."""
        canvas = output.canvas
        kept, skipping = [], False
        for token, generated, active in zip(
            output.tokens[row].tolist(), canvas.generated[row].tolist(), canvas.active[row].tolist()
        ):
            if not generated:
                skipping = False
            elif stop_at_eos and token == self.tokenizer.eos_id:
                skipping = True
            if active and not skipping:
                kept.append(token)
        if mask is None:
            return self.tokenizer.decode(kept)
        pieces, run = [], []
        for token in kept:  # the tokens between two masks are decoded together
            if token == self.tokenizer.mask_id:
                pieces += [self.tokenizer.decode(run), mask]
                run = []
            else:
                run.append(token)
        return "".join(pieces) + self.tokenizer.decode(run)
