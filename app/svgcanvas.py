"""The drawing primitives of the exported SVG (app.svgexport): the page's geometry and colours, the
outlines drawn behind entry lines, escaping and fitting text, and the canvas that writes lines top to
bottom. Shared by the TDP tree and bitmaps (app.svgexport) and the shadow-paging tables (app.svgshadow).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

WIDTH = 1280  # px: the projector width the pages are designed for (style.md)
MARGIN = 20
INDENT = 18  # per nesting level: table head, its entries, the child table, ...
FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
SIZE = 12  # px
CHAR = 7.3  # px, the advance of one character at SIZE in a monospace font (0.6 em, rounded up)
LINE = 20  # px per line of text
CELL = 14  # px, one bitmap cell
PITCH = 16  # px from one cell to the next
ROW_LABEL = 12  # characters before the first cell of a bitmap row

# Budgets on top of the view's own caps (see the module docstring).
MAX_TREE_LINES = 400
MAX_CELLS = 4096
MAX_ROWS_PER_SLOT = 128
MAX_BITMAP_LINES = 1024
MAX_TEXT_LINES = 4  # narration and title lines

INK = "#1a1a1a"
MUTED = "#555555"
LINK = "#0b4f9c"
BAD = "#a40000"
PAPER = "#ffffff"

# Columns of an entry line, in characters from the entry's x.
COL_INDEX, COL_KIND, COL_TARGET, COL_BITS, COL_RAW, COL_DELTA = 2, 10, 22, 70, 90, 110


@dataclass(frozen=True, slots=True)
class Box:
    """The outline drawn behind an entry line."""

    fill: str
    stroke: str
    width: float = 1.0
    dash: str = ""


TABLE_HEAD = Box("#e9eef5", "#8796aa")
LEAF_4K = Box("#ffffff", "#b9c1cc")
LEAF_LARGE = Box("#dde9fb", "#1f5fae", 2.0)
POINTER = Box("#f5f6f8", "#b9c1cc")
GHOST = Box("#ffffff", "#7a7a7a", 1.0, "4 3")
CHANGED_FILL = "#fff1b8"

# XML 1.0 has no way to write these, not even as character references.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def esc(text: str) -> str:
    """Text or an attribute value, safe inside double quotes and between tags."""
    text = _NOT_XML.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def one_line(text: str) -> str:
    return " ".join(text.split())


def fit(text: str, chars: int) -> str:
    text = one_line(text)
    return text if len(text) <= chars else text[: max(0, chars - 1)] + "…"


def wrap(text: str, chars: int, lines: int) -> list[str]:
    out = textwrap.wrap(one_line(text), chars, break_long_words=True) or [""]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = fit(out[-1] + " …", chars)
    return out


def n(value: float) -> str:
    """A coordinate: whole pixels without a fraction, else one decimal."""
    return str(int(value)) if value == int(value) else f"{value:.1f}"


# One run of text in a line: the text and the extra attributes of its <tspan> (column x, weight, fill).
Segment = tuple[str, str]


class Canvas:
    """The picture's elements, written top to bottom; `y` is the top of the next line."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.y = MARGIN
        self.tree_lines = 0
        self.bitmap_lines = 0
        self.cells = 0

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def text(self, x: float, segments: list[Segment], *, size: int = SIZE, attrs: str = "") -> None:
        """One line of text; each segment's attributes may place it at its own column (x=)."""
        baseline = self.y + (LINE + size) / 2 - 2
        spans = "".join(
            f"<tspan{extra}>{esc(text)}</tspan>" if extra else esc(text) for text, extra in segments
        )
        size_attr = f' font-size="{size}"' if size != SIZE else ""
        self.add(f'<text x="{n(x)}" y="{n(baseline)}"{size_attr}{attrs}>{spans}</text>')

    def box(self, x: float, box: Box, *, fill: str | None = None, height: int = LINE - 2) -> None:
        dash = f' stroke-dasharray="{box.dash}"' if box.dash else ""
        self.add(
            f'<rect x="{n(x)}" y="{n(self.y + 1)}" width="{n(WIDTH - MARGIN - x)}" height="{height}"'
            f' rx="3" fill="{fill or box.fill}" stroke="{box.stroke}" stroke-width="{n(box.width)}"{dash}/>'
        )

    def line(self, x: float, text: str, *, size: int = SIZE, attrs: str = "") -> None:
        chars = int((WIDTH - MARGIN - x) / (CHAR * size / SIZE))
        self.text(x, [(fit(text, chars), "")], size=size, attrs=attrs)
        self.y += LINE if size <= SIZE else LINE + (size - SIZE)

    def gap(self, pixels: int = LINE // 2) -> None:
        self.y += pixels


def col(x: float, column: int) -> str:
    return f' x="{n(x + column * CHAR)}"'


def x_at(depth: int) -> float:
    return MARGIN + depth * INDENT
