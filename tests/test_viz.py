"""Views of sampling: the live terminal view rendered into a recording rich console."""

from __future__ import annotations

import io

from rich.console import Console

from ddlm.viz.terminal import LiveView, SamplingProgress
from ddlm.viz.tokens import MASK_GLYPH, Kind, position_kinds
from tests.test_stream import TOKENIZER, pipeline


def recording_console() -> Console:
    return Console(record=True, width=120, file=io.StringIO(), force_terminal=True, color_system="truecolor")


def test_live_view_animates_from_masks_to_the_final_text():
    pipe = pipeline("masked")
    console = recording_console()
    steps = []
    with LiveView(pipe.tokenizer, total_samples=2, console=console, transient=False) as view:
        for step in view.watch(pipe.stream("ab", num_samples=2, length=10, steps=5, seed=0, texts=False)):
            steps.append(step)
    first = view.render_row(steps[0], 0).plain
    assert first.startswith("ab") and first.count(MASK_GLYPH) == 10 - int(steps[0].revealed[0].sum())
    lines = console.export_text().rstrip().splitlines()  # frames follow each other without a line break
    final = [pipe.decode(steps[-1], row, stop_at_eos=False) for row in range(2)]
    assert lines[-3].endswith(final[0]) and lines[-2] == final[1]  # the last frame stays: every sample's text
    assert lines[-1].startswith("step 5 · 5 model calls · ") and lines[-1].endswith("0% noise · samples 1-2 of 2")


def test_live_view_styles_this_steps_tokens_and_remasked_positions():
    pipe = pipeline("masked")
    steps = list(pipe.stream(length=12, steps=6, seed=4, remask="cap", remask_eta=0.5, texts=False))
    view = LiveView(pipe.tokenizer, total_samples=1, console=recording_console())
    remasking = next(step for step in steps if step.remasked.any())
    kinds = position_kinds(remasking, 0, TOKENIZER.mask_id)
    assert kinds.count(Kind.REMASKED) == int(remasking.remasked.sum())
    assert kinds.count(Kind.REVEALED) == int(remasking.revealed.sum())
    rendered = view.render_row(remasking, 0)
    styles = {str(span.style) for span in rendered.spans}
    assert "bold red" in styles and "bold black on bright_green" in styles


def test_progress_bar_is_hidden_when_stderr_is_not_a_terminal():
    console = Console(file=io.StringIO(), force_terminal=False)
    pipe = pipeline("masked")
    with SamplingProgress(3, console=console) as progress:
        list(progress.watch(pipe.stream(num_samples=3, length=4, steps=2, seed=0, batch_size=2)))
    assert progress.progress.disable and console.file.getvalue() == ""
