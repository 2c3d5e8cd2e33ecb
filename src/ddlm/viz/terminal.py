"""The terminal views of ``ddlm sample``: the denoising animated live, or a progress bar.

Both pass the steps of :meth:`ddlm.DiffusionPipeline.stream` through :meth:`StepView.watch`,
which draws each and ends a batch's view before the next batch begins; they are context
managers that clean up the screen when sampling ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from ddlm.samplers import SamplerStep
from ddlm.tokenizers import Tokenizer
from ddlm.viz.style import HIGHLIGHT, MASK, REMASK, hex_color
from ddlm.viz.tokens import MASK_GLYPH, REMASKED_GLYPH, Kind, RowView, TokenPieces, step_views

STYLES = {  # the web page's and the GIF's colours (ddlm.viz.style)
    Kind.GIVEN: "bold",
    Kind.MASKED: hex_color(MASK),
    Kind.REVEALED: f"bold black on {hex_color(HIGHLIGHT)}",
    Kind.REMASKED: f"bold {hex_color(REMASK)}",
    Kind.GENERATED: "",
}
PLACEHOLDERS = {Kind.MASKED: MASK_GLYPH, Kind.REMASKED: REMASKED_GLYPH}


class StepView:
    """Something that draws a stream's steps."""

    def show(self, step: SamplerStep) -> None:
        """Draw ``step``."""

    def end_batch(self) -> None:
        """The current batch is finished."""

    def watch(self, steps: Iterable[SamplerStep]) -> Iterator[SamplerStep]:
        """Pass ``steps`` through, drawing each, and ending each batch before the next one's first step."""
        batch = None
        for step in steps:
            if batch is not None and step.first_sample != batch:
                self.end_batch()
            batch = step.first_sample
            self.show(step)
            yield step
        self.end_batch()


class LiveView(StepView):
    """The canvas of the current batch redrawn at every step with ``rich.live``.

    Masked positions show as ░ (grey), this step's tokens highlighted in yellow, positions
    masked again as ▒ (red); a status line gives the step, the model calls, tokens per second and the
    samples shown. At most ``max_rows`` samples of a batch are drawn. With ``transient`` the
    animation is cleared when a batch ends (the caller prints the final texts); without it
    the last frame stays on screen.
    """

    def __init__(self, tokenizer: Tokenizer, total_samples: int, console: Console | None = None, max_rows: int = 4,
                 transient: bool = True):
        self.tokenizer, self.total_samples, self.max_rows = tokenizer, total_samples, max_rows
        self.console = console or Console()
        self.pieces = TokenPieces(tokenizer)
        self.transient = transient
        self.live = Live(console=self.console, auto_refresh=False, transient=transient)
        self.started = time.perf_counter()
        self.tokens_done = 0

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.live.stop()

    def show(self, step: SamplerStep) -> None:
        """Draw ``step`` (each step of the stream in order)."""
        self.tokens_done += int(step.revealed.sum())
        self.live.update(self.render(step), refresh=True)

    def end_batch(self) -> None:
        """Finish the current batch's animation (cleared when transient) before its texts are printed."""
        self.live.stop()
        self.live = Live(console=self.console, auto_refresh=False, transient=self.transient)
        self.live.start()

    def render(self, step: SamplerStep) -> Group:
        rows = min(step.tokens.shape[0], self.max_rows)
        lines: list[Text] = [self.render_row(view) for view in step_views(step, rows=range(rows))]
        if step.tokens.shape[0] > rows:
            lines.append(Text(f"(+{step.tokens.shape[0] - rows} more samples in this batch)", style="dim"))
        lines.append(Text(self.status(step), style="cyan"))
        return Group(*lines)

    def render_row(self, view: RowView) -> Text:
        """One sample at one step: each position as its text or placeholder, styled by its kind."""
        text = Text()
        for token, kind in zip(view.tokens, view.kinds(self.tokenizer.mask_id)):
            text.append(PLACEHOLDERS.get(kind) or self.pieces(token), style=STYLES[kind])
        return text

    def status(self, step: SamplerStep) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        first = step.first_sample + 1
        last = step.first_sample + step.tokens.shape[0]
        samples = f"sample {first}" if first == last else f"samples {first}-{last}"
        return (f"step {step.index + 1} · {step.model_calls} model calls · {self.tokens_done / elapsed:,.0f} tokens/s "
                f"· {step.noise:.0%} noise · {samples} of {self.total_samples}")


class SamplingProgress(StepView):
    """A progress bar over all samples on stderr; hidden when disabled or when stderr is not a terminal."""

    def __init__(self, total_samples: int, enabled: bool = True, console: Console | None = None):
        self.total_samples = total_samples
        console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("sampling"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[done]}/{task.total:.0f} samples"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not (enabled and console.is_terminal), transient=True,
        )
        self.task = self.progress.add_task("sampling", total=total_samples, done=0)

    def __enter__(self) -> SamplingProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.stop()

    def show(self, step: SamplerStep) -> None:
        """Advance to ``step``: finished batches count whole, the current one by how much noise is gone."""
        batch = step.tokens.shape[0]
        self.progress.update(self.task, completed=step.first_sample + batch * (1 - step.noise),
                             done=step.first_sample + (batch if step.noise == 0 else 0))
