"""The canvas as HTML: one box per token, masked ones grey, this step's outlined, coloured by confidence.

A :class:`Frame` is what the page keeps of each step, enough to redraw it when the slider
scrubs back; :class:`FrameMaker` follows a run's steps and remembers, for every position, the
model's probability of the token drawn there (reset when a position is masked again).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

from ddlm.samplers import SamplerStep
from ddlm.viz.tokens import TokenPieces

CONFIDENCE_LEVELS = 5  # colour buckets c0 (unsure) .. c4 (sure)

CSS = """
.ddlm-canvas { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 15px;
  line-height: 1.9; white-space: pre-wrap; word-break: break-all; padding: 12px 14px; border-radius: 8px;
  background: #fcfcfd; border: 1px solid #e4e4e7; color: #18181b; }
.ddlm-canvas .sample-label { display: block; font: 600 12px system-ui, sans-serif; color: #71717a; margin: 4px 0 2px; }
.ddlm-canvas .t { padding: 1px 0; border-radius: 3px; }
.ddlm-canvas .given { color: #18181b; font-weight: 700; text-decoration: underline #a1a1aa; }
.ddlm-canvas .m { background: #d4d4d8; color: #d4d4d8; }
.ddlm-canvas .new { outline: 2px solid #ea580c; outline-offset: -1px; }
.ddlm-canvas .eos { font: 600 10px system-ui, sans-serif; color: #71717a; padding: 1px 2px; }
.ddlm-canvas .c0 { background: #fee2e2; } .ddlm-canvas .c1 { background: #fef3c7; }
.ddlm-canvas .c2 { background: #ecfccb; } .ddlm-canvas .c3 { background: #bbf7d0; }
.ddlm-canvas .c4 { background: #86efac; }
.ddlm-legend { font: 13px system-ui, sans-serif; color: #3f3f46; }
.ddlm-legend .t { font-family: ui-monospace, monospace; padding: 1px 5px; border-radius: 3px; margin: 0 2px; }
.ddlm-legend .m { background: #d4d4d8; } .ddlm-legend .new { outline: 2px solid #ea580c; outline-offset: -1px; }
.ddlm-legend .c0 { background: #fee2e2; } .ddlm-legend .c2 { background: #ecfccb; } .ddlm-legend .c4 { background: #86efac; }
.ddlm-legend .given { font-weight: 700; text-decoration: underline #a1a1aa; }
.ddlm-legend .eos { font: 600 10px system-ui, sans-serif; color: #71717a; }
.ddlm-status { font: 14px system-ui, sans-serif; color: #27272a; padding: 6px 2px; }
.ddlm-status b { font-variant-numeric: tabular-nums; }
"""

LEGEND = (
    '<div class="ddlm-legend"><span class="t given">prompt</span> given text · '
    '<span class="t m">&nbsp;&nbsp;</span> still masked · '
    '<span class="t new c2">a</span> written this step · <span class="t eos">end</span> end of text · '
    'confidence: '
    '<span class="t c0">low</span><span class="t c2">medium</span><span class="t c4">high</span></div>'
)


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
    """Turns the steps of one batch into :class:`Frame` s, remembering each position's confidence."""

    def __init__(self) -> None:
        self.confidence: list[list[float | None]] | None = None

    def __call__(self, step: SamplerStep, seconds: float) -> Frame:
        active, generated = step.canvas.active, step.canvas.generated
        rows = range(step.tokens.shape[0])
        if self.confidence is None:
            self.confidence = [[None] * int(active[row].sum()) for row in rows]
        new = []
        for row in rows:
            changed = step.changed[row].nonzero().flatten().tolist()
            for position in changed:
                value = float(step.confidence[row, position]) if step.confidence is not None else math.nan
                drawn = bool(step.revealed[row, position]) and math.isfinite(value)
                self.confidence[row][position] = value if drawn else None
            new.append(changed)
        return Frame(
            step=step.index + 1,
            tokens=[step.tokens[row][active[row]].tolist() for row in rows],
            generated=[generated[row][active[row]].tolist() for row in rows],
            new=new,
            confidence=[list(row) for row in self.confidence],
            model_calls=step.model_calls,
            seconds=seconds,
            noise=float(step.noise),
        )


def confidence_class(probability: float | None) -> str:
    if probability is None:
        return ""
    return f"c{min(CONFIDENCE_LEVELS - 1, int(probability * CONFIDENCE_LEVELS))}"


def token_html(piece: str, classes: str) -> str:
    """One token's box; a newline stays a line break, shown as a return sign; end of text (no text) as 'end'."""
    if not piece:
        return f'<span class="t {classes} eos">end</span>'
    shown = html.escape(piece).replace("\n", "↵\n")
    return f'<span class="t {classes}">{shown}</span>'


def canvas_html(frame: Frame | None, pieces: TokenPieces, mask_id: int,
                empty: str = "The canvas appears here: the prompt, then grey boxes that the model fills in.") -> str:
    """The frame as HTML: given text plain, masked positions grey, new ones outlined, colour by confidence."""
    if frame is None:
        return f'<div class="ddlm-canvas" id="canvas-empty">{html.escape(empty)}</div>'
    parts = []
    for row, tokens in enumerate(frame.tokens):
        if len(frame.tokens) > 1:
            parts.append(f'<span class="sample-label">sample {row + 1}</span>')
        new = set(frame.new[row])
        for position, token in enumerate(tokens):
            if not frame.generated[row][position]:
                parts.append(token_html(pieces(token), "given"))
            elif token == mask_id:
                parts.append(token_html(" ", "m" + (" new" if position in new else "")))
            else:
                classes = confidence_class(frame.confidence[row][position]) + (" new" if position in new else "")
                parts.append(token_html(pieces(token), classes))
        parts.append("\n")
    return f'<div class="ddlm-canvas" data-step="{frame.step}">{"".join(parts).rstrip()}</div>'


def status_html(frame: Frame | None, total_steps: int | None = None, state: str = "denoising", note: str = "") -> str:
    """The line above the canvas: state (denoising, done, replay), step, model calls, tokens per second, noise left."""
    if frame is None:
        return f'<div class="ddlm-status">{html.escape(note)}</div>'
    written = sum(1 for row, tokens in enumerate(frame.tokens)
                  for position, _ in enumerate(tokens) if frame.generated[row][position])
    rate = written * (1 - frame.noise) / frame.seconds if frame.seconds > 0 else 0.0
    steps = f"{frame.step}" + (f" of {total_steps}" if total_steps else "")
    return (f'<div class="ddlm-status" data-state="{state}"><b>{state}</b> · step <b>{steps}</b> · '
            f'<b>{frame.model_calls}</b> model calls · <b>{rate:,.0f}</b> tokens/s · '
            f'<b>{frame.noise:.0%}</b> still noise · {frame.seconds:.2f} s'
            + (f" · {html.escape(note)}" if note else "") + "</div>")
