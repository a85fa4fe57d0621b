"""One step of the player as a standalone SVG picture: the page-table tree and the dirty bitmaps.

The picture is for slides, notes and bug reports, so it has to keep the player's meaning when it leaves
the app: it is drawn from the same `PlayView` the player renders (the same tree with its drawing budget,
the same folded bitmap rows), and says where it came from (title, preset, step, and the share URL as a
link and in `<metadata>`).

Why it is written the way it is:

- **Nothing runs, nothing is fetched.** No script, no event handler, no `<style>`, no `<image>` or
  `<use>` of another file: a picture that people pass around must be inert, and opened from the server it
  runs under the app's Content-Security-Policy, whose `style-src 'self'` would drop an inline style
  sheet. Every colour, size and weight is a presentation attribute. The one outside reference is the
  share link.
- **Every text is escaped.** Scenario titles, notes and descriptions come from whoever wrote the share
  code; characters XML 1.0 cannot hold at all (most control characters) become U+FFFD.
- **Meaning not by colour alone.** Changed entries carry ★, removed ones ✕ and a dashed outline, large
  leaves ▣ and a heavy outline, dirty cells ●, written-not-dirty cells !, besides their colours; light
  background, dark ink.
- **A vertical list with computed coordinates.** One line per table head, entry, folded run or bitmap
  row, indented by depth; monospace text, so columns line up and widths follow from character counts.
- **Bounded.** The view is capped already, but its folded bitmap rows are not (alternating clean and
  dirty rows of a 4 GiB VM fold into tens of thousands), so the picture has budgets of its own: at most
  `MAX_TREE_LINES` tree lines, `MAX_CELLS` bitmap cells, `MAX_ROWS_PER_SLOT` bitmap rows per slot and
  `MAX_BITMAP_LINES` in all; the rest is summarised in one line, and the picture stays under a megabyte.

The contract's hooks (`data-spte` with its location, value and flags, `data-dirty-gfn`/`data-dirty`, and
the project's `data-large`, `data-changed`, `data-spte-ghost`, `data-written`) are kept on the groups, so
tests and scripts read the picture the way they read the page.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from app.views.bitmap import BitmapRow, BitmapView
from app.views.play import PlayView
from app.views.text import hx
from app.views.tree import TableView
from app.views.tree_fold import RunView, SpteView

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
class Caption:
    """What the picture says about itself; the view does not know where it is shown."""

    title: str  # the scenario's title (or its built-in name)
    preset: str  # "lazy", or "lazy + wp_large=zap" with what-if switches
    preset_description: str
    share_url: str  # the absolute player URL of this step


@dataclass(frozen=True, slots=True)
class _Box:
    """The outline drawn behind an entry line."""

    fill: str
    stroke: str
    width: float = 1.0
    dash: str = ""


_TABLE_HEAD = _Box("#e9eef5", "#8796aa")
_LEAF_4K = _Box("#ffffff", "#b9c1cc")
_LEAF_LARGE = _Box("#dde9fb", "#1f5fae", 2.0)
_POINTER = _Box("#f5f6f8", "#b9c1cc")
_GHOST = _Box("#ffffff", "#7a7a7a", 1.0, "4 3")
_CHANGED_FILL = "#fff1b8"

# XML 1.0 has no way to write these, not even as character references.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _esc(text: str) -> str:
    """Text or an attribute value, safe inside double quotes and between tags."""
    text = _NOT_XML.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fit(text: str, chars: int) -> str:
    text = _one_line(text)
    return text if len(text) <= chars else text[: max(0, chars - 1)] + "…"


def _wrap(text: str, chars: int, lines: int) -> list[str]:
    out = textwrap.wrap(_one_line(text), chars, break_long_words=True) or [""]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = _fit(out[-1] + " …", chars)
    return out


def _n(value: float) -> str:
    """A coordinate: whole pixels without a fraction, else one decimal."""
    return str(int(value)) if value == int(value) else f"{value:.1f}"


# One run of text in a line: the text and the extra attributes of its <tspan> (column x, weight, fill).
Segment = tuple[str, str]


class _Canvas:
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
            f"<tspan{extra}>{_esc(text)}</tspan>" if extra else _esc(text) for text, extra in segments
        )
        size_attr = f' font-size="{size}"' if size != SIZE else ""
        self.add(f'<text x="{_n(x)}" y="{_n(baseline)}"{size_attr}{attrs}>{spans}</text>')

    def box(self, x: float, box: _Box, *, fill: str | None = None, height: int = LINE - 2) -> None:
        dash = f' stroke-dasharray="{box.dash}"' if box.dash else ""
        self.add(
            f'<rect x="{_n(x)}" y="{_n(self.y + 1)}" width="{_n(WIDTH - MARGIN - x)}" height="{height}"'
            f' rx="3" fill="{fill or box.fill}" stroke="{box.stroke}" stroke-width="{_n(box.width)}"{dash}/>'
        )

    def line(self, x: float, text: str, *, size: int = SIZE, attrs: str = "") -> None:
        chars = int((WIDTH - MARGIN - x) / (CHAR * size / SIZE))
        self.text(x, [(_fit(text, chars), "")], size=size, attrs=attrs)
        self.y += LINE if size <= SIZE else LINE + (size - SIZE)

    def gap(self, pixels: int = LINE // 2) -> None:
        self.y += pixels


def _col(x: float, column: int) -> str:
    return f' x="{_n(x + column * CHAR)}"'


def _x(depth: int) -> float:
    return MARGIN + depth * INDENT


# ---------------------------------------------------------------------------------------------------------
# The page-table tree


def _table(c: _Canvas, t: TableView, depth: int) -> None:
    x = _x(depth)
    hooks = f' data-sp-level="{t.level}" data-sp-gfn="{t.gfn:#x}"'
    tags: list[Segment] = []
    if t.orphan:
        hooks += ' data-orphan="1"'
        tags.append(("  ⚠ orphaned: no entry points here", f' fill="{BAD}"'))
    if t.freed:
        hooks += ' data-freed="1"'
        tags.append(("  ✕ freed this step", f' fill="{BAD}"'))
    c.add(f"<g{hooks}>")
    c.box(x, _TABLE_HEAD)
    name = "root table" if t.root else "table"
    head = f"L{t.level} {name} · gfns {t.gfn:#x}–{t.last_gfn:#x} · "
    room = int((WIDTH - MARGIN - x) / CHAR) - 2 - len(head) - sum(len(text) for text, _ in tags)
    c.text(x + 4, [(head, ' font-weight="bold"'), (_fit(t.summary, max(room, 8)), ""), *tags])
    c.y += LINE
    c.tree_lines += 1
    for position, item in enumerate(t.items):
        if c.tree_lines >= MAX_TREE_LINES:
            rest = len(t.items) - position
            c.line(
                _x(depth + 1),
                f"… {rest} more lines of this table not drawn: open the share link",
                attrs=f' fill="{MUTED}"',
            )
            break
        if isinstance(item, RunView):
            _run(c, item, depth + 1)
        else:
            _entry(c, item, depth + 1)
    c.add("</g>")


def _run(c: _Canvas, r: RunView, depth: int) -> None:
    x = _x(depth)
    if r.changed:
        c.box(x, _LEAF_4K, fill=_CHANGED_FILL)
    chars = int((WIDTH - MARGIN - x) / CHAR) - 16
    mark = "★" if r.changed else ""
    c.add(f'<g data-run="{r.first:#x}-{r.last:#x}">')
    c.text(
        x + 4,
        [
            (mark, ""),
            (f"[{r.first:#x}–{r.last:#x}]", _col(x + 4, COL_INDEX)),
            (_fit(r.text, chars), _col(x + 4, 16)),
        ],
        attrs=f' fill="{INK if r.changed else MUTED}"',
    )
    c.add("</g>")
    c.y += LINE
    c.tree_lines += 1


def _entry_box(e: SpteView) -> _Box:
    if e.ghost:
        return _GHOST
    return {"large": _LEAF_LARGE, "4k": _LEAF_4K}.get(e.kind, _POINTER)


def _entry(c: _Canvas, e: SpteView, depth: int) -> None:
    x = _x(depth)
    hook = "data-spte-ghost" if e.ghost else "data-spte"
    c.add(f'<g {hook}=""{e.data_attrs}>')
    box = _entry_box(e)
    c.box(x, box, fill=_CHANGED_FILL if e.changed and not e.ghost else None)
    if e.ghost:
        mark, delta = "✕", "✕ removed this step"
    elif e.changed:
        mark = "★"
        was = f" ({e.old_kind})" if e.old_kind else ""
        delta = "★ new" if not e.old else f"★ was {e.old:#x}{was}"
    else:
        mark, delta = ("◆", "") if e.selected else ("", "")
    if e.selected:  # the spte the player's inspector shows (spte=)
        delta = f"{delta} ◆ selected".strip()
    if e.kind == "large":
        kind: Segment = (f"▣ {e.size} page", _col(x + 4, COL_KIND) + ' font-weight="bold"')
    elif e.kind == "4k":
        kind = ("4K", _col(x + 4, COL_KIND))
    else:
        kind = (f"→ {e.size}", _col(x + 4, COL_KIND))
    fill = f' fill="{MUTED}"' if e.ghost else ""
    c.text(
        x + 4,
        [
            (mark, ' font-weight="bold"'),
            (f"[{e.index:#x}]", _col(x + 4, COL_INDEX)),
            kind,
            (e.target, _col(x + 4, COL_TARGET)),
            (e.bits, _col(x + 4, COL_BITS)),
            (f"{e.value:#x}", _col(x + 4, COL_RAW)),
            (delta, _col(x + 4, COL_DELTA) + ' font-weight="bold"'),
        ],
        attrs=fill,
    )
    c.y += LINE
    c.tree_lines += 1
    if e.warning:
        c.line(x + 4 + COL_INDEX * CHAR, f"⚠ {e.warning}", attrs=f' fill="{BAD}" font-weight="bold"')
        c.tree_lines += 1
    c.add("</g>")
    if e.child is not None:
        _table(c, e.child, depth + 1)
    elif e.child_note:
        c.line(_x(depth + 1), e.child_note, attrs=f' fill="{MUTED}"')
        c.tree_lines += 1


# ---------------------------------------------------------------------------------------------------------
# Dirty bitmaps


def _cell(c: _Canvas, x: float, gfn: int | None, dirty: bool, written: bool) -> None:
    """One bitmap cell; without a gfn, a sample for the legend (no hooks: it is no slot's cell)."""
    top = _n(c.y + 2)
    rect = f'x="{_n(x)}" y="{top}" width="{CELL}" height="{CELL}"'
    hooks = (
        f'data-dirty-gfn="{gfn:#x}" data-dirty="{int(dirty)}"' if gfn is not None else 'aria-hidden="true"'
    )
    middle, baseline = _n(x + CELL / 2), _n(c.y + 2 + CELL - 3)
    if written:
        hooks += ' data-written="1"' if gfn is not None else ""
        c.add(
            f'<g {hooks}><rect {rect} fill="#ffe0e0" stroke="{BAD}" stroke-width="1.5"/>'
            f'<text x="{middle}" y="{baseline}" text-anchor="middle" font-weight="bold"'
            f' fill="{BAD}">!</text></g>'
        )
    elif dirty:
        c.add(
            f'<g {hooks}><rect {rect} fill="#1f5fae" stroke="#1f5fae"/>'
            f'<text x="{middle}" y="{baseline}" text-anchor="middle" font-size="10"'
            f' fill="{PAPER}">●</text></g>'
        )
    else:
        c.add(f'<rect {hooks} {rect} fill="{PAPER}" stroke="#8a9099"/>')


def _row_text(row: BitmapRow) -> str:
    """A row not drawn cell by cell, in the player's words."""
    return row.run_text


def _counts(row: BitmapRow) -> tuple[int, int]:
    """(dirty, written-not-dirty) pages of a row, drawn or folded."""
    if row.drawn:
        return row.dirty_mask.bit_count(), row.written_mask.bit_count()
    return row.dirty_pages, row.written_pages


def _bitmap(c: _Canvas, b: BitmapView) -> None:
    x = _x(0)
    c.add(f'<g data-slot="{b.slot}">')
    last = b.base_gfn + b.npages - 1
    c.text(
        x,
        [
            (f"Slot {b.slot}", ' font-weight="bold"'),
            (f"  gfns {b.base_gfn:#x}–{last:#x}, {b.npages} pages", ""),
        ],
    )
    c.y += LINE
    if not b.logged:
        c.line(_x(1), "Not dirty-logged: no bitmap.", attrs=f' fill="{MUTED}"')
    else:
        shown = " ".join(hx(g) for g in b.dirty[:12]) + (" …" if b.dirty_count > 12 else "")
        c.line(_x(1), f"● {b.dirty_count} dirty" + (f": {shown}" if b.dirty else ""))
        if b.written_count:
            written = " ".join(hx(g) for g in b.written[:12]) + (" …" if b.written_count > 12 else "")
            c.line(
                _x(1),
                f"! {b.written_count} written, not dirty: {written} — a migration would lose these writes",
                attrs=f' fill="{BAD}" font-weight="bold"',
            )
        _rows(c, b.rows)
    if b.lost:
        lost = " ".join(hx(g) for g in b.lost[:32]) + (" …" if len(b.lost) > 32 else "")
        c.line(_x(1), f"✕ Lost to the migration: {lost}", attrs=f' fill="{BAD}" font-weight="bold"')
    c.add("</g>")


def _rows(c: _Canvas, rows: list[BitmapRow]) -> None:
    x = _x(1)
    for position, row in enumerate(rows):
        c.bitmap_lines += 1
        if position >= MAX_ROWS_PER_SLOT or c.bitmap_lines > MAX_BITMAP_LINES:
            rest = rows[position:]
            dirty = sum(_counts(r)[0] for r in rest)
            written = sum(_counts(r)[1] for r in rest)
            c.line(
                x,
                f"… {len(rest)} more rows, gfns {rest[0].gfn:#x}–{rest[-1].last_gfn:#x}, not drawn:"
                f" {dirty} dirty ●, {written} written, not dirty !",
                attrs=f' fill="{MUTED}"',
            )
            return
        if row.drawn and c.cells + row.count <= MAX_CELLS:
            c.text(x, [(f"{row.gfn:#x}", "")], attrs=f' fill="{MUTED}"')
            left = x + ROW_LABEL * CHAR
            for cell in row.cells:
                _cell(c, left + (cell.gfn - row.gfn) * PITCH, cell.gfn, cell.dirty, cell.written)
            c.cells += row.count
            c.y += PITCH + 2
            continue
        if row.drawn:
            dirty, written = _counts(row)
            text = (
                f"{row.gfn:#x}–{row.last_gfn:#x}: {row.count} pages,"
                f" {dirty} dirty ●, {written} written, not dirty !"
            )
            state = "mixed"
        else:
            text, state = _row_text(row), row.state
        c.add(f'<g data-dirty-run="{row.gfn:#x}-{row.last_gfn:#x}" data-state="{state}">')
        c.line(x, text, attrs=f' fill="{MUTED}"' if state == "clean" else "")
        c.add("</g>")


# ---------------------------------------------------------------------------------------------------------
# The whole picture


def _legend(c: _Canvas) -> None:
    x = _x(0)
    c.text(
        x,
        [
            ("▣ 2M page", ' font-weight="bold"'),
            (" large leaf (PS, heavy outline) · 4K leaf · → table pointer · ", ""),
            ("★", ' font-weight="bold"'),
            (" changed this step (yellow) · ", ""),
            ("✕", ' font-weight="bold"'),
            (" removed this step (dashed) · bits R W X PS A D HW MW, · = clear", ""),
        ],
        size=11,
        attrs=f' fill="{MUTED}"',
    )
    c.y += LINE


def _bitmap_legend(c: _Canvas) -> None:
    x = _x(0)
    samples = (
        (True, False, "dirty"),
        (False, False, "clean"),
        (False, True, "written, not dirty: no GET_DIRTY_LOG will report it"),
    )
    for dirty, written, label in samples:
        _cell(c, x, None, dirty, written)
        c.text(x + CELL + 4, [(label, "")], size=11, attrs=f' fill="{MUTED}"')
        x += CELL + 4 + len(label) * CHAR * 11 / SIZE + 2 * PITCH
    c.y += LINE


def _heading(c: _Canvas, view: PlayView, caption: Caption) -> None:
    x = _x(0)
    for line in _wrap(caption.title or "Untitled scenario", 90, 2):
        c.line(x, line, size=18, attrs=' font-weight="bold"')
    c.text(
        x,
        [
            (f"Step {view.step} of {view.total}", ' font-weight="bold"'),
            (" · preset ", ""),
            (_fit(caption.preset, 60), ' font-weight="bold"'),
            (f" — {_fit(caption.preset_description, 90)}" if caption.preset_description else "", ""),
        ],
    )
    c.y += LINE
    # A note step's words are its note (the player shows them beside its narration line).
    said = view.note or view.narration
    what = f"#{view.step} {view.op}: {said}" if view.op else said
    for line in _wrap(what, 150, MAX_TEXT_LINES):
        c.line(x, line)
    current = [v for v in view.violations if v.current]
    for v in current[:4]:
        c.add(f'<g data-violation="{_esc(v.invariant)}">')
        c.line(x, f"⚠ violation {v.invariant}: {v.message}", attrs=f' fill="{BAD}" font-weight="bold"')
        c.add("</g>")
    if len(current) > 4:
        c.line(x, f"⚠ … {len(current) - 4} more violations in this step", attrs=f' fill="{BAD}"')
    url = _esc(caption.share_url)
    c.add(f'<a href="{url}" data-share="">')
    c.text(
        x,
        [
            ("Open this step in sptelab: ", f' fill="{MUTED}"'),
            (_fit(caption.share_url, 130), ' text-decoration="underline"'),
        ],
        size=11,
        attrs=f' fill="{LINK}"',
    )
    c.add("</a>")
    c.y += LINE


def step_svg(view: PlayView, caption: Caption) -> str:
    """The picture of one player step, as the text of a standalone SVG document."""
    c = _Canvas()
    _heading(c, view, caption)
    c.gap()
    tree = view.tree
    c.line(
        _x(0),
        f"Page tables: {tree.tables} tables · {tree.present} present sptes · {tree.large} large ·"
        f" {tree.changed} changed this step",
        size=14,
        attrs=' font-weight="bold"',
    )
    _legend(c)
    for table in [tree.root, *tree.orphans, *tree.freed]:
        _table(c, table, 0)
    if tree.present > tree.drawn:
        c.line(
            _x(0),
            f"{tree.drawn} sptes drawn one by one; alike runs are summarised.",
            attrs=f' fill="{MUTED}"',
        )
    c.gap()
    c.line(_x(0), "Dirty bitmaps", size=14, attrs=' font-weight="bold"')
    _bitmap_legend(c)
    for bitmap in view.bitmaps:
        _bitmap(c, bitmap)
        c.gap(6)
    height = c.y + MARGIN
    title = _esc(
        f"{caption.title or 'Untitled scenario'} · {caption.preset} · step {view.step} of {view.total}"
    )
    share = _esc(caption.share_url)
    head = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}"'
        f' viewBox="0 0 {WIDTH} {height}" font-family="{FONT}" font-size="{SIZE}" fill="{INK}"'
        ' role="img" aria-labelledby="export-title export-desc">\n'
        f'<title id="export-title">{title}</title>\n'
        f'<desc id="export-desc">The page-table tree and dirty bitmaps of the sptelab player at this step.'
        f" Open it in the player: {share}</desc>\n"
        "<metadata>\n"
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/">\n'
        f'<rdf:Description rdf:about="{share}">\n'
        f"<dc:title>{title}</dc:title>\n"
        f"<dc:source>{share}</dc:source>\n"
        "<dc:creator>sptelab</dc:creator>\n"
        "<dc:format>image/svg+xml</dc:format>\n"
        "</rdf:Description>\n"
        "</rdf:RDF>\n"
        "</metadata>\n"
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="{PAPER}"/>\n'
    )
    return head + "\n".join(c.parts) + "\n</svg>\n"
