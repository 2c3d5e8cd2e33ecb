"""One look for every view of a run: the colours and glyphs the web page, the GIF animations and the terminal share.

While a canvas is being denoised, masked positions are grey boxes, positions masked again are
red boxes, this step's tokens are underlined in yellow, and generated tokens are inked from
red (the model was unsure of them) through amber to green (sure). A finished canvas is plain
text. End of text shows as ``¶`` and, on a canvas whose lines must not move, a line break as ``↵``.
"""

from __future__ import annotations

RGB = tuple[int, int, int]

INK, GIVEN_INK, FAINT = (30, 30, 30), (20, 20, 20), (120, 120, 120)
MASK, REMASK, HIGHLIGHT = (212, 212, 216), (226, 75, 65), (250, 204, 21)
LOW, MID, HIGH = (200, 30, 30), (190, 120, 0), (25, 130, 55)  # confidence 0 -> 0.5 -> 1
EARLY, LATE = (40, 90, 200), (200, 60, 160)  # revealed first -> last
EOS_GLYPH, NEWLINE_GLYPH = "¶", "↵"


def mix(a: RGB, b: RGB, weight: float) -> RGB:
    """The colour ``weight`` of the way from ``a`` to ``b``."""
    weight = min(max(weight, 0.0), 1.0)
    return tuple(round(x + (y - x) * weight) for x, y in zip(a, b))


def confidence_color(p: float) -> RGB:
    """The ink of a token the model drew with probability ``p``."""
    return mix(LOW, MID, p / 0.5) if p < 0.5 else mix(MID, HIGH, (p - 0.5) / 0.5)


def hex_color(color: RGB) -> str:
    """``color`` as CSS and rich write it: ``#rrggbb``."""
    return "#" + "".join(f"{channel:02x}" for channel in color)


def display_piece(piece: str, line_breaks: bool = True) -> str:
    """A token's text as drawn on a canvas: end of text and other special tokens as ¶, a line break as ↵
    (followed by the break itself with ``line_breaks``), other control characters as spaces."""
    if piece == "":
        return EOS_GLYPH
    shown = "".join(c if c.isprintable() or c == "\n" else " " for c in piece)
    return shown.replace("\n", NEWLINE_GLYPH + ("\n" if line_breaks else ""))
