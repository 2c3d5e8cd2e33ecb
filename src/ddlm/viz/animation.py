"""Animations of one sample with Pillow: the reverse process step by step, or the forward process.

Each frame is the sample's canvas laid out as text that does not move between frames:
every position keeps the width of its final token. The colours are the web page's
(:mod:`ddlm.viz.style`): masked positions are grey boxes; generated tokens are inked by the
model's confidence when they were drawn or by when they were revealed; this step's tokens are
underlined in yellow; positions masked again are red boxes. A header counts the steps and
a legend explains the colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path
from ddlm.samplers import SamplerStep
from ddlm.tokenizers import Tokenizer
from ddlm.viz.style import (
    EARLY,
    FAINT,
    GIVEN_INK,
    HIGH,
    HIGHLIGHT,
    INK,
    LATE,
    LOW,
    MASK,
    MID,
    REMASK,
    confidence_color,
    display_piece,
    mix,
)
from ddlm.viz.tokens import DrawMemory, Kind, RowView, TokenPieces, step_views

COLOR_BY = ("confidence", "time")
FORMATS = (".gif", ".webp")
WIDTH, MARGIN, FONT_SIZE, LINE_GAP = 720, 16, 18, 6
FONT_FILES = ("DejaVuSansMono.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", "LiberationMono-Regular.ttf")


@dataclass
class Cell:
    """One position in one frame: its text and how it is drawn."""

    text: str
    ink: tuple[int, int, int] = INK
    box: tuple[int, int, int] | None = None  # a filled box instead of text (masked positions)
    highlight: bool = False  # underlined: changed by this frame's step


@dataclass
class Frame:
    header: str
    cells: list[Cell]


def denoising_frames(steps: Sequence[SamplerStep], tokenizer: Tokenizer, color_by: str = "confidence",
                     row: int = 0, total_steps: int | None = None) -> list[Frame]:
    """One frame for the canvas before the first step (every generated position masked) and one per step.

    The headers count to ``total_steps`` (a stopped run's planned steps), by default to the last step.
    """
    if color_by not in COLOR_BY:
        raise DDLMError(f"unknown colouring {color_by!r}; choose one of {list(COLOR_BY)}")
    pieces, memory = TokenPieces(tokenizer), DrawMemory()
    total = total_steps or steps[-1].index + 1  # the sampler's steps: those that change nothing are not streamed
    nothing = torch.zeros_like(steps[0].revealed)
    start = SamplerStep(-1, steps[0].canvas.tokens, nothing, nothing, None, 1.0, 0, canvas=steps[0].canvas)
    return [frame_of(step, step_views(step, memory, rows=[row])[0], pieces, tokenizer.mask_id, color_by, total)
            for step in (start, *steps)]


def frame_of(step: SamplerStep, view: RowView, pieces: TokenPieces, mask_id: int, color_by: str,
             total_steps: int) -> Frame:
    """The frame of one sample (``view``) at ``step``."""
    cells = []
    for token, kind, confidence, revealed_at in zip(view.tokens, view.kinds(mask_id), view.confidence,
                                                    view.revealed_at):
        if kind is Kind.MASKED:
            cells.append(Cell("", box=MASK))
        elif kind is Kind.REMASKED:
            cells.append(Cell("", box=REMASK, highlight=True))
        elif kind is Kind.GIVEN:
            cells.append(Cell(display_piece(pieces(token)), ink=GIVEN_INK))
        else:
            if color_by == "time":
                ink = mix(EARLY, LATE, revealed_at / max(total_steps - 1, 1))
            else:
                ink = INK if confidence is None else confidence_color(confidence)  # None: no confidence (never drawn)
            cells.append(Cell(display_piece(pieces(token)), ink=ink, highlight=kind is Kind.REVEALED))
    masked = sum(cell.box is not None for cell in cells)
    header = "start" if step.index < 0 else f"step {step.index + 1}/{total_steps}"
    return Frame(f"{header} · {masked} masked · {step.model_calls} model calls", cells)


def forward_frames(process, tokenizer: Tokenizer, text: str, count: int, seed: int = 0) -> list[Frame]:
    """The text corrupted by the process's own forward process at ``count`` noise levels from t = 0 to 1.

    One seed for every level, so a position corrupted at one level stays corrupted at the
    higher ones (masked for masked diffusion and SEDD absorbing, a random token for SEDD uniform).
    """
    corrupt = getattr(process, "corrupt", None)
    if corrupt is None:
        raise DDLMError(f"the {process.name} model has no forward noise process to animate; use a diffusion model")
    if count < 2:
        raise DDLMError(f"--steps must be at least 2 to animate the forward process, got {count}")
    ids = tokenizer.encode(text)
    if not ids:
        raise DDLMError("--forward needs some text to corrupt")
    x0 = torch.tensor([ids])
    pieces = TokenPieces(tokenizer)
    frames = []
    for t in torch.linspace(0, 1, count, dtype=torch.float64):
        xt = corrupt(x0, t.reshape(1), torch.Generator().manual_seed(seed))[0].tolist()
        cells = [Cell("", box=MASK) if noisy == tokenizer.mask_id
                 else Cell(display_piece(pieces(noisy)), ink=REMASK if noisy != clean else INK)
                 for clean, noisy in zip(ids, xt)]
        changed = sum(noisy != clean for clean, noisy in zip(ids, xt))
        frames.append(Frame(f"forward process · t = {float(t):.2f} · {changed}/{len(ids)} corrupted", cells))
    return frames


def load_font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A monospaced TrueType font where one is installed, else Pillow's default font."""
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


class Layout:
    """Where each position is drawn: laid out once from the widest text each position takes in any frame."""

    def __init__(self, frames: Sequence[Frame], font, legend: list[tuple[str, tuple[int, int, int]]]):
        self.font, self.legend = font, legend
        self.line_height = int(font.getbbox("Mg")[3]) + LINE_GAP
        box_width = font.getlength("M")
        widths = [max(box_width, *(font.getlength(frame.cells[i].text.replace("\n", "")) for frame in frames))
                  for i in range(len(frames[0].cells))]
        breaks = [any(frame.cells[i].text.endswith("\n") for frame in frames) for i in range(len(widths))]
        self.places: list[tuple[float, int, float]] = []  # (x, line, width)
        x, line = MARGIN, 0
        for width, line_break in zip(widths, breaks):
            if x + width > WIDTH - MARGIN and x > MARGIN:
                x, line = MARGIN, line + 1
            self.places.append((x, line, width))
            x += width
            if line_break:
                x, line = MARGIN, line + 1
        self.text_top = MARGIN + self.line_height + LINE_GAP
        lines = (self.places[-1][1] + 1) if self.places else 1
        self.height = self.text_top + lines * self.line_height + 2 * self.line_height + MARGIN

    def draw(self, frame: Frame) -> Image.Image:
        image = Image.new("RGB", (WIDTH, self.height), "white")
        draw = ImageDraw.Draw(image)
        draw.text((MARGIN, MARGIN), frame.header, fill=FAINT, font=self.font)
        for (x, line, width), cell in zip(self.places, frame.cells):
            top = self.text_top + line * self.line_height
            bottom = top + self.line_height - LINE_GAP
            if cell.box is not None:
                draw.rounded_rectangle((x + 1, top + 2, x + width - 1, bottom), radius=3, fill=cell.box)
            else:
                draw.text((x, top), cell.text.replace("\n", ""), fill=cell.ink, font=self.font)
            if cell.highlight:
                draw.rectangle((x, bottom + 1, x + width, bottom + 3), fill=HIGHLIGHT)
        self.draw_legend(draw)
        return image

    def draw_legend(self, draw: ImageDraw.ImageDraw) -> None:
        x, top = MARGIN, self.height - MARGIN - self.line_height
        for label, color in self.legend:
            draw.rectangle((x, top + 4, x + 12, top + 16), fill=color)
            draw.text((x + 16, top), label, fill=FAINT, font=self.font)
            x += 16 + self.font.getlength(label) + 14


def legend_for(color_by: str) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend of a denoising animation: what the boxes and colours mean."""
    if color_by == "confidence":
        colors = [("confidence 0", LOW), ("0.5", MID), ("1", HIGH)]
    else:
        colors = [("revealed first", EARLY), ("last", LATE)]
    return [("masked", MASK), *colors, ("this step", HIGHLIGHT), ("remasked", REMASK)]


def forward_legend(frames: Sequence[Frame]) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend of a forward-process animation: the kinds of corruption its frames show (masking, or a
    random token for SEDD uniform)."""
    cells = [cell for frame in frames for cell in frame.cells]
    kinds = [("masked", MASK, any(cell.box == MASK for cell in cells)),
             ("resampled", REMASK, any(cell.box is None and cell.ink == REMASK for cell in cells))]
    return [(label, color) for label, color, shown in kinds if shown]


def check_animation_path(path: str | Path) -> Path:
    """``path`` if it names a format this module writes (checked before any sampling)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise DDLMError(f"cannot write {path.name}: animations are {' or '.join(FORMATS)} files")
    return path


def save_animation(frames: Sequence[Frame], path: str | Path, legend: list[tuple[str, tuple[int, int, int]]],
                   frame_ms: int = 120, hold_ms: int = 2000) -> int:
    """Write ``frames`` as an animated GIF or WebP (by the file's suffix), the last frame held; returns the frame count."""
    path = check_animation_path(path)
    if frame_ms < 1 or hold_ms < 0:
        raise DDLMError(f"frame time must be >= 1 ms and hold time >= 0 ms, got {frame_ms} and {hold_ms}")
    layout = Layout(frames, load_font(), legend)
    images = [layout.draw(frame) for frame in frames]
    durations = [frame_ms] * (len(images) - 1) + [frame_ms + hold_ms]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format=path.suffix.lower().lstrip("."), save_all=True, append_images=images[1:],
                       duration=durations, loop=0)
    return len(images)
