"""Views: the live terminal view in a recording rich console, GIF animations opened with Pillow, plots."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from ddlm.cli import main
from ddlm.errors import DDLMError
from ddlm.training.logger import MetricsLog
from ddlm.viz.animation import denoising_frames, forward_frames, forward_legend
from ddlm.viz.plots import plot_tradeoff, pyplot, read_log
from ddlm.viz.style import HIGHLIGHT, MASK, REMASK, hex_color
from ddlm.viz.terminal import LiveView, SamplingProgress
from ddlm.viz.tokens import MASK_GLYPH, DrawMemory, Kind, step_views
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
    first = view.render_row(step_views(steps[0])[0]).plain
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
    row = step_views(remasking)[0]
    kinds = row.kinds(TOKENIZER.mask_id)
    assert kinds.count(Kind.REMASKED) == int(remasking.remasked.sum())
    assert kinds.count(Kind.REVEALED) == int(remasking.revealed.sum())
    rendered = view.render_row(row)
    styles = {str(span.style) for span in rendered.spans}
    assert f"bold {hex_color(REMASK)}" in styles and f"bold black on {hex_color(HIGHLIGHT)}" in styles


def test_step_views_remember_each_positions_last_draw_within_a_batch():
    """Views leave padding out, and remember each position's last draw until its batch ends."""
    pipe = pipeline("masked")
    steps = list(pipe.stream(["ab", "abcd", "a"], length=6, steps=6, seed=2, batch_size=2, policy="confidence",
                             texts=False))
    memory, drawn, batch = DrawMemory(), {}, None
    for step in steps:
        if step.first_sample != batch:  # a new batch starts from nothing drawn
            drawn, batch = {}, step.first_sample
        for row, (view, alone) in enumerate(zip(step_views(step, memory), step_views(step))):
            active = step.canvas.active[row]
            assert view.tokens == step.tokens[row][active].tolist() and len(view.confidence) == int(active.sum())
            assert view.where(view.revealed) == step.revealed[row].nonzero().flatten().tolist()
            for position in view.where(view.revealed):
                drawn[row, position] = (float(step.confidence[row, position]), step.index)
            remembered = {(row, p): (view.confidence[p], view.revealed_at[p])
                          for p in range(len(view.tokens)) if view.revealed_at[p] >= 0}
            assert remembered == {key: value for key, value in drawn.items() if key[0] == row}
            # without memory: this step's draws only
            assert {p for p, value in enumerate(alone.confidence) if value is not None} == set(view.where(view.revealed))
    assert {step.first_sample for step in steps} == {0, 2} and not bool(steps[0].canvas.active.all())


def test_progress_bar_is_hidden_when_stderr_is_not_a_terminal():
    console = Console(file=io.StringIO(), force_terminal=False)
    pipe = pipeline("masked")
    with SamplingProgress(3, console=console) as progress:
        list(progress.watch(pipe.stream(num_samples=3, length=4, steps=2, seed=0, batch_size=2)))
    assert progress.progress.disable and console.file.getvalue() == ""


# ----- animations -----

def mask_pixels(image: Image.Image) -> int:
    """Pixels in the colour of a masked position's box."""
    return int((np.asarray(image.convert("RGB")) == MASK).all(axis=-1).sum())


def frames_of(path: Path) -> list[Image.Image]:
    with Image.open(path) as gif:
        frames = []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(gif.convert("RGB"))
        return frames


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("viz") / "model"
    pipeline("masked").save_pretrained(directory)
    return directory


def test_animate_writes_one_frame_per_step_from_all_masked_to_none(model_dir, tmp_path):
    out = tmp_path / "denoise.gif"
    arguments = ["--prompt", "ab", "--length", "12", "--steps", "6", "--seed", "2", "--policy", "confidence"]
    assert main(["animate", "--model", str(model_dir), "--out", str(out), *arguments, "--hold-ms", "1500"]) == 0
    steps = list(pipeline("masked").stream("ab", length=12, steps=6, seed=2, policy="confidence"))
    frames = frames_of(out)
    assert len(frames) == len(steps) + 1  # the start, then one frame per step
    legend = mask_pixels(frames[-1])  # the legend's box; no masked position is left at the end
    assert mask_pixels(frames[0]) > legend + 12 * 50  # twelve boxes of more than 50 pixels each
    boxes = [mask_pixels(frame) - legend for frame in frames]
    assert boxes == sorted(boxes, reverse=True)  # the confidence policy never masks again
    with Image.open(out) as gif:
        gif.seek(len(frames) - 1)
        assert gif.info["duration"] == 120 + 1500  # the last frame is held


def test_frame_headers_count_the_samplers_steps_not_the_streamed_ones():
    """With far more steps than positions most steps change nothing and are not streamed; the
    headers still number the sampler's steps, ending at the last one."""
    steps = list(pipeline("masked").stream("ab", length=4, steps=40, seed=1))
    last = steps[-1].index + 1
    assert len(steps) < last  # some steps were not streamed
    headers = [frame.header for frame in denoising_frames(steps, TOKENIZER)]
    assert headers[0].startswith("start") and headers[-1].startswith(f"step {last}/{last}")
    assert all(f"/{last}" in header for header in headers[1:])


def test_animate_colours_by_reveal_time_and_writes_webp(model_dir, tmp_path):
    out = tmp_path / "denoise.webp"
    assert main(["animate", "--model", str(model_dir), "--out", str(out), "--length", "8", "--steps", "4",
                 "--seed", "0", "--color", "time"]) == 0
    with Image.open(out) as webp:
        assert webp.format == "WEBP" and webp.n_frames >= 2


def test_forward_animation_masks_more_at_each_level(model_dir, tmp_path):
    out = tmp_path / "forward.gif"
    assert main(["animate", "--model", str(model_dir), "--out", str(out), "--forward", "abcdefabcdef",
                 "--steps", "8"]) == 0
    frames = frames_of(out)
    boxes = [mask_pixels(frame) for frame in frames]
    assert len(frames) == 9 and boxes == sorted(boxes)  # t = 0 .. 1; a masked token stays masked
    assert boxes[0] == min(boxes) and boxes[-1] > boxes[0] + 12 * 50  # clean at t = 0, all masked at t = 1


def test_forward_animation_of_uniform_sedd_resamples_tokens():
    process = pipeline("sedd-uniform").process
    frames = forward_frames(process, TOKENIZER, "abcdefabcdef" * 3, count=5, seed=1)
    resampled = [sum(cell.ink == REMASK for cell in frame.cells) for frame in frames]
    assert resampled[0] == 0 and resampled[-1] > 20 and all(cell.box is None for cell in frames[-1].cells)
    assert [label for label, _ in forward_legend(frames)] == ["resampled"]
    masked = forward_frames(pipeline("masked").process, TOKENIZER, "abcdefabcdef", count=5, seed=1)
    assert [label for label, _ in forward_legend(masked)] == ["masked"]  # masking only: no resampled entry


def test_animation_errors_are_one_line(model_dir, tmp_path, capsys):
    assert main(["animate", "--model", str(model_dir), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "animations are .gif or .webp files" in capsys.readouterr().err
    with pytest.raises(DDLMError, match="no forward noise process"):
        forward_frames(pipeline("ar").process, TOKENIZER, "abc", count=4)


# ----- plots -----

def write_log(run: Path, rows: list[dict]) -> None:
    log = MetricsLog(run)
    for row in rows:
        log.write(**row)
    log.close()


def test_plot_overlays_the_curves_of_several_runs(tmp_path):
    for name, scale in (("a", 1.0), ("b", 1.5)):
        run = tmp_path / name
        run.mkdir()
        write_log(run, [{"step": s, "elapsed_s": s * 0.5, "train_nelbo": scale * 4 / s,
                         "valid_nelbo": scale * 4 / s if s % 10 == 0 else ""} for s in range(1, 41)])
    out = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 400
    curves = read_log(tmp_path / "b")
    assert len(curves["train_nelbo"]) == 40 and [p[0] for p in curves["valid_nelbo"]] == [10, 20, 30, 40]


def test_the_benchmark_trade_off_is_a_png(tmp_path):
    points = [{"label": "ancestral", "calls": 256, "nll": 2.1, "entropy": 4.1},
              {"label": "threshold", "calls": 40, "nll": 2.3, "entropy": 3.9},
              {"label": "threshold, prefix cache", "calls": 40, "nll": 2.3, "entropy": 3.9}]
    plot_tradeoff(points, tmp_path / "tradeoff.png", baseline_entropy=4.1)
    with Image.open(tmp_path / "tradeoff.png") as image:
        assert image.format == "PNG" and image.width > image.height > 300
        one_panel = image.width
    timed = [{**point, "seconds": point["calls"] / 10, "precision": "bf16"} for point in points]
    plot_tradeoff(timed, tmp_path / "frontier.png")
    with Image.open(tmp_path / "frontier.png") as image:
        assert image.format == "PNG" and image.width > one_panel  # a second panel: wall time


def test_plot_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    assert "no log.csv" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    with pytest.raises(DDLMError, match=r"pip install 'ddlm\[plot\]'"):
        pyplot()
