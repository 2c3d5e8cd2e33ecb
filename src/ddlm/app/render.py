"""The canvas and the status line as HTML, in the colours of the GIFs and the terminal (:mod:`ddlm.viz.style`).

While a run denoises, the canvas is a grid that does not move: one cell per position, masked
ones grey boxes that wrap like text, this step's tokens underlined, generated tokens inked by
the model's confidence, a generated line break drawn as ↵ in place (it breaks the line once
the text is finished). A finished canvas is plain text: the given text bold, the rest as
written, cut at the first generated end of text.

A :class:`Frame` is what the page keeps of each step, enough to redraw it when the slider
scrubs back; :class:`FrameMaker` follows a run's steps and remembers, for every position, the
model's probability of the token drawn there (reset when a position is masked again).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from ddlm.samplers import SamplerStep
from ddlm.viz.style import EOS_GLYPH, FAINT, HIGHLIGHT, INK, MASK, REMASK, confidence_color, display_piece, hex_color
from ddlm.viz.tokens import DrawMemory, TokenPieces, step_views

CONFIDENCE_LEVELS = 5  # ink buckets c0 (unsure) .. c4 (sure)
MASK_TEXT = "_"  # a masked cell holds a character (drawn as a box), so that a run of them wraps like text
EMPTY_CANVAS = "The canvas appears here: the prompt, then grey boxes that the model fills in."
TEXT_RUNS = {"given": '<b class="given">{}</b>', "text": "{}", "eos": '<span class="eos" title="end of text">{}</span>'}


def confidence_rules(scope: str) -> str:
    """CSS inks of the confidence buckets, each the colour of its middle probability."""
    return " ".join(f"{scope} .c{level} {{ color: {hex_color(confidence_color((level + 0.5) / CONFIDENCE_LEVELS))}; }}"
                    for level in range(CONFIDENCE_LEVELS))


CSS = f"""
.ddlm-canvas {{ font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 15px;
  line-height: 1.8; white-space: break-spaces; word-break: break-all; padding: 12px 14px; border-radius: 8px;
  background: #fcfcfd; border: 1px solid #e4e4e7; color: {hex_color(INK)}; min-height: 3.6em; }}
.ddlm-canvas.ddlm-text {{ white-space: pre-wrap; word-break: normal; overflow-wrap: anywhere; }}
.ddlm-canvas.ddlm-note {{ font-family: system-ui, sans-serif; white-space: normal; word-break: normal;
  color: #71717a; }}
.ddlm-canvas .sample-label {{ display: block; font: 600 12px system-ui, sans-serif; color: #71717a; margin: 4px 0 2px;
  white-space: normal; }}
.ddlm-canvas .given, .ddlm-legend .given {{ font-weight: 700; }}
.ddlm-canvas .m, .ddlm-legend .m {{ background: {hex_color(MASK)}; color: transparent; box-shadow: inset 1px 0 #fcfcfd; }}
.ddlm-canvas .m.re, .ddlm-legend .m.re {{ background: {hex_color(REMASK)}; }}
.ddlm-canvas .new, .ddlm-legend .new {{ box-shadow: inset 0 -3px {hex_color(HIGHLIGHT)}; }}
.ddlm-canvas .eos, .ddlm-legend .eos {{ color: {hex_color(FAINT)}; }}
{confidence_rules(".ddlm-canvas")} {confidence_rules(".ddlm-legend")}
.ddlm-legend {{ font: 13px system-ui, sans-serif; color: #3f3f46; line-height: 1.9; }}
.ddlm-legend .t {{ font-family: ui-monospace, monospace; padding: 0 2px; }}
.ddlm-status {{ font: 14px system-ui, sans-serif; color: #27272a; padding: 6px 2px; }}
.ddlm-status b {{ font-variant-numeric: tabular-nums; }}
.ddlm-status > span, .ddlm-legend > span {{ white-space: nowrap; }}
"""

LEGEND = '<div class="ddlm-legend">' + " · ".join(f"<span>{item}</span>" for item in (
    '<span class="t given">prompt</span> given',
    f'<span class="t m">{MASK_TEXT * 2}</span> masked',
    f'<span class="t m re">{MASK_TEXT}</span> masked again',
    '<span class="t new">a</span> written this step',
    '<span class="t c0">low</span> <span class="t c2">medium</span> <span class="t c4">high</span> confidence',
    f'<span class="t eos">{EOS_GLYPH}</span> end of text',
    '<span class="t">↵</span> line break',
)) + ". The finished text is plain.</div>"


@dataclass
class Frame:
    """One step of a run as the page shows it: each sample's tokens, what changed, and the run's counters."""

    step: int  # 1-based: steps taken so far
    tokens: list[list[int]]  # each sample's active positions (MASK where masked)
    generated: list[list[bool]]  # positions the sampler fills (False: prompt, suffix, template text)
    new: list[list[int]]  # positions written or masked again by this step
    confidence: list[list[float | None]]  # probability of the token at each position when it was drawn
    model_calls: int
    seconds: float  # computing time so far
    noise: float


class FrameMaker:
    """Turns the steps of a run into :class:`Frame` s, remembering each position's confidence."""

    def __init__(self) -> None:
        self.memory = DrawMemory()

    def __call__(self, step: SamplerStep, seconds: float) -> Frame:
        views = step_views(step, self.memory)
        return Frame(
            step=step.index + 1,
            tokens=[view.tokens for view in views],
            generated=[view.generated for view in views],
            new=[view.changed for view in views],
            confidence=[view.confidence for view in views],
            model_calls=step.model_calls,
            seconds=seconds,
            noise=float(step.noise),
        )


def confidence_class(probability: float | None) -> str:
    if probability is None:
        return ""
    return f"c{min(CONFIDENCE_LEVELS - 1, int(probability * CONFIDENCE_LEVELS))}"


def is_finished(frame: Frame, mask_id: int) -> bool:
    """Whether ``frame`` is a finished canvas: no noise left, nothing masked."""
    return frame.noise == 0 and all(token != mask_id for tokens in frame.tokens for token in tokens)


def canvas_html(frame: Frame | None, pieces: TokenPieces, mask_id: int, empty: str = EMPTY_CANVAS) -> str:
    """The frame as HTML: the denoising grid, or plain text once it is finished (a note without a frame)."""
    if frame is None:
        return f'<div class="ddlm-canvas ddlm-note">{html.escape(empty)}</div>'
    draw_row = text_row if is_finished(frame, mask_id) else grid_row
    parts = []
    for row in range(len(frame.tokens)):
        if len(frame.tokens) > 1:
            parts.append(f'<span class="sample-label">sample {row + 1}</span>')
        parts.append(draw_row(frame, row, pieces, mask_id).rstrip("\n"))
    kind = "ddlm-text" if draw_row is text_row else "ddlm-grid"
    body = "\n".join(parts)
    return f'<div class="ddlm-canvas {kind}" data-step="{frame.step}">{body}</div>'


def grid_row(frame: Frame, row: int, pieces: TokenPieces, mask_id: int) -> str:
    """One sample while denoising: a cell per position; only the given text breaks lines."""
    new, cells = set(frame.new[row]), []
    for position, token in enumerate(frame.tokens[row]):
        changed = " new" if position in new else ""
        if not frame.generated[row][position]:
            cells.append(f'<span class="t given">{html.escape(pieces(token))}</span>')
        elif token == mask_id:
            cells.append(f'<span class="t m{" re" if changed else ""}">{MASK_TEXT}</span>')
        else:
            piece = pieces(token)
            ink = "eos" if piece == "" else confidence_class(frame.confidence[row][position])
            cells.append(f'<span class="t {ink}{changed}">{html.escape(display_piece(piece, line_breaks=False))}</span>')
    return "".join(cells)


def text_row(frame: Frame, row: int, pieces: TokenPieces, mask_id: int) -> str:
    """One finished sample as plain text: the given text bold, the generated text cut at its end of text
    (until the next given text, as the pipeline's texts are)."""
    runs: list[list[str]] = []  # [kind, text]: runs of given text, generated text, an end of text
    ended = False
    for token, generated in zip(frame.tokens[row], frame.generated[row]):
        piece = pieces(token)
        if not generated:
            ended = False
        elif ended:
            continue
        elif piece == "":
            ended = True
        kind = "eos" if ended else "text" if generated else "given"
        if runs and runs[-1][0] == kind != "eos":
            runs[-1][1] += piece
        else:
            runs.append([kind, EOS_GLYPH if kind == "eos" else piece])
    return "".join(TEXT_RUNS[kind].format(html.escape(text)) for kind, text in runs)


def status_html(frame: Frame | None, state: str = "", total_steps: int | None = None,
                seed: int | None = None, note: str = "") -> str:
    """The line above the canvas: the state (queued, denoising, done, stopped, replay), the steps, model calls,
    tokens per second, noise left, time and the seed that repeats the run."""
    if frame is None:
        parts = [f"<b>{state}</b>"] if state else []
    else:
        written = sum(sum(row) for row in frame.generated)
        rate = written * (1 - frame.noise) / frame.seconds if frame.seconds > 0 else 0.0
        steps = (f"<b>{frame.step}</b> step{'s' * (frame.step != 1)}" if state == "done"
                 else f"step <b>{frame.step}" + (f" of {total_steps}" if total_steps else "") + "</b>")
        parts = [f"<b>{state}</b>", steps, f"<b>{frame.model_calls}</b> model calls", f"<b>{rate:,.0f}</b> tokens/s"]
        if state != "done":
            parts.append(f"<b>{frame.noise:.0%}</b> still noise")
        parts.append(f"{frame.seconds:.2f} s")
    if seed is not None:
        parts.append(f'seed <b class="seed">{seed}</b>')
    if note:
        parts.append(html.escape(note))
    return f'<div class="ddlm-status" data-state="{state}">{" · ".join(f"<span>{part}</span>" for part in parts)}</div>'
