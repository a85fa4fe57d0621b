"""One step of the player as a standalone SVG picture: the page-table tree and the dirty bitmaps (under
shadow paging the guest's and the shadow tables instead of the tree: app.svgshadow).

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

from dataclasses import dataclass

from app.svgcanvas import (
    BAD,
    CELL,
    CHANGED_FILL,
    CHAR,
    COL_BITS,
    COL_DELTA,
    COL_INDEX,
    COL_KIND,
    COL_RAW,
    COL_TARGET,
    FONT,
    GHOST,
    INK,
    LEAF_4K,
    LEAF_LARGE,
    LINE,
    LINK,
    MARGIN,
    MAX_BITMAP_LINES,
    MAX_CELLS,
    MAX_ROWS_PER_SLOT,
    MAX_TEXT_LINES,
    MAX_TREE_LINES,
    MUTED,
    PAPER,
    PITCH,
    POINTER,
    ROW_LABEL,
    SIZE,
    TABLE_HEAD,
    WIDTH,
    Box,
    Canvas,
    Segment,
    col,
    esc,
    fit,
    n,
    wrap,
    x_at,
)
from app.svgshadow import draw_shadow
from app.views.bitmap import BitmapRow, BitmapView
from app.views.play import PlayView
from app.views.shadow import ShadowView
from app.views.text import hx
from app.views.tree import TableView
from app.views.tree_fold import RunView, SpteView


@dataclass(frozen=True, slots=True)
class Caption:
    """What the picture says about itself; the view does not know where it is shown."""

    title: str  # the scenario's title (or its built-in name)
    preset: str  # "lazy", or "lazy + wp_large=zap" with what-if switches
    preset_description: str
    share_url: str  # the absolute player URL of this step


# ---------------------------------------------------------------------------------------------------------
# The page-table tree


def _table(c: Canvas, t: TableView, depth: int) -> None:
    x = x_at(depth)
    hooks = f' data-sp-level="{t.level}" data-sp-gfn="{t.gfn:#x}"'
    tags: list[Segment] = []
    if t.orphan:
        hooks += ' data-orphan="1"'
        tags.append(("  ⚠ orphaned: no entry points here", f' fill="{BAD}"'))
    if t.freed:
        hooks += ' data-freed="1"'
        tags.append(("  ✕ freed this step", f' fill="{BAD}"'))
    c.add(f"<g{hooks}>")
    c.box(x, TABLE_HEAD)
    name = "root table" if t.root else "table"
    head = f"L{t.level} {name} · gfns {t.gfn:#x}–{t.last_gfn:#x} · "
    room = int((WIDTH - MARGIN - x) / CHAR) - 2 - len(head) - sum(len(text) for text, _ in tags)
    c.text(x + 4, [(head, ' font-weight="bold"'), (fit(t.summary, max(room, 8)), ""), *tags])
    c.y += LINE
    c.tree_lines += 1
    for position, item in enumerate(t.items):
        if c.tree_lines >= MAX_TREE_LINES:
            rest = len(t.items) - position
            c.line(
                x_at(depth + 1),
                f"… {rest} more lines of this table not drawn: open the share link",
                attrs=f' fill="{MUTED}"',
            )
            break
        if isinstance(item, RunView):
            _run(c, item, depth + 1)
        else:
            _entry(c, item, depth + 1)
    c.add("</g>")


def _run(c: Canvas, r: RunView, depth: int) -> None:
    x = x_at(depth)
    if r.changed:
        c.box(x, LEAF_4K, fill=CHANGED_FILL)
    chars = int((WIDTH - MARGIN - x) / CHAR) - 16
    mark = "★" if r.changed else ""
    c.add(f'<g data-run="{r.first:#x}-{r.last:#x}">')
    c.text(
        x + 4,
        [
            (mark, ""),
            (f"[{r.first:#x}–{r.last:#x}]", col(x + 4, COL_INDEX)),
            (fit(r.text, chars), col(x + 4, 16)),
        ],
        attrs=f' fill="{INK if r.changed else MUTED}"',
    )
    c.add("</g>")
    c.y += LINE
    c.tree_lines += 1


def _entry_box(e: SpteView) -> Box:
    if e.ghost:
        return GHOST
    return {"large": LEAF_LARGE, "4k": LEAF_4K}.get(e.kind, POINTER)


def _entry(c: Canvas, e: SpteView, depth: int) -> None:
    x = x_at(depth)
    hook = "data-spte-ghost" if e.ghost else "data-spte"
    c.add(f'<g {hook}=""{e.data_attrs}>')
    box = _entry_box(e)
    c.box(x, box, fill=CHANGED_FILL if e.changed and not e.ghost else None)
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
        kind: Segment = (f"▣ {e.size} page", col(x + 4, COL_KIND) + ' font-weight="bold"')
    elif e.kind == "4k":
        kind = ("4K", col(x + 4, COL_KIND))
    else:
        kind = (f"→ {e.size}", col(x + 4, COL_KIND))
    fill = f' fill="{MUTED}"' if e.ghost else ""
    c.text(
        x + 4,
        [
            (mark, ' font-weight="bold"'),
            (f"[{e.index:#x}]", col(x + 4, COL_INDEX)),
            kind,
            (e.target, col(x + 4, COL_TARGET)),
            (e.bits, col(x + 4, COL_BITS)),
            (f"{e.value:#x}", col(x + 4, COL_RAW)),
            (delta, col(x + 4, COL_DELTA) + ' font-weight="bold"'),
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
        c.line(x_at(depth + 1), e.child_note, attrs=f' fill="{MUTED}"')
        c.tree_lines += 1


# ---------------------------------------------------------------------------------------------------------
# Dirty bitmaps


def _cell(c: Canvas, x: float, gfn: int | None, dirty: bool, written: bool) -> None:
    """One bitmap cell; without a gfn, a sample for the legend (no hooks: it is no slot's cell)."""
    top = n(c.y + 2)
    rect = f'x="{n(x)}" y="{top}" width="{CELL}" height="{CELL}"'
    hooks = (
        f'data-dirty-gfn="{gfn:#x}" data-dirty="{int(dirty)}"' if gfn is not None else 'aria-hidden="true"'
    )
    middle, baseline = n(x + CELL / 2), n(c.y + 2 + CELL - 3)
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


def _bitmap(c: Canvas, b: BitmapView) -> None:
    x = x_at(0)
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
        c.line(x_at(1), "Not dirty-logged: no bitmap.", attrs=f' fill="{MUTED}"')
    else:
        shown = " ".join(hx(g) for g in b.dirty[:12]) + (" …" if b.dirty_count > 12 else "")
        c.line(x_at(1), f"● {b.dirty_count} dirty" + (f": {shown}" if b.dirty else ""))
        if b.written_count:
            written = " ".join(hx(g) for g in b.written[:12]) + (" …" if b.written_count > 12 else "")
            c.line(
                x_at(1),
                f"! {b.written_count} written, not dirty: {written} — a migration would lose these writes",
                attrs=f' fill="{BAD}" font-weight="bold"',
            )
        _rows(c, b.rows)
    if b.lost:
        lost = " ".join(hx(g) for g in b.lost[:32]) + (" …" if len(b.lost) > 32 else "")
        c.line(x_at(1), f"✕ Lost to the migration: {lost}", attrs=f' fill="{BAD}" font-weight="bold"')
    c.add("</g>")


def _rows(c: Canvas, rows: list[BitmapRow]) -> None:
    x = x_at(1)
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


def _legend(c: Canvas) -> None:
    x = x_at(0)
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


def _bitmap_legend(c: Canvas) -> None:
    x = x_at(0)
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


def _heading(c: Canvas, view: PlayView, caption: Caption) -> None:
    x = x_at(0)
    for line in wrap(caption.title or "Untitled scenario", 90, 2):
        c.line(x, line, size=18, attrs=' font-weight="bold"')
    c.text(
        x,
        [
            (f"Step {view.step} of {view.total}", ' font-weight="bold"'),
            (" · preset ", ""),
            (fit(caption.preset, 60), ' font-weight="bold"'),
            (f" — {fit(caption.preset_description, 90)}" if caption.preset_description else "", ""),
        ],
    )
    c.y += LINE
    # A note step's words are its note (the player shows them beside its narration line).
    said = view.note or view.narration
    what = f"#{view.step} {view.op}: {said}" if view.op else said
    for line in wrap(what, 150, MAX_TEXT_LINES):
        c.line(x, line)
    current = [v for v in view.violations if v.current]
    for v in current[:4]:
        c.add(f'<g data-violation="{esc(v.invariant)}">')
        c.line(x, f"⚠ violation {v.invariant}: {v.message}", attrs=f' fill="{BAD}" font-weight="bold"')
        c.add("</g>")
    if len(current) > 4:
        c.line(x, f"⚠ … {len(current) - 4} more violations in this step", attrs=f' fill="{BAD}"')
    url = esc(caption.share_url)
    c.add(f'<a href="{url}" data-share="">')
    c.text(
        x,
        [
            ("Open this step in sptelab: ", f' fill="{MUTED}"'),
            (fit(caption.share_url, 130), ' text-decoration="underline"'),
        ],
        size=11,
        attrs=f' fill="{LINK}"',
    )
    c.add("</a>")
    c.y += LINE


def step_svg(view: PlayView, caption: Caption) -> str:
    """The picture of one player step, as the text of a standalone SVG document."""
    c = Canvas()
    _heading(c, view, caption)
    c.gap()
    if isinstance(view.shadow, ShadowView):
        draw_shadow(c, view.shadow)
    else:
        _tree(c, view)
    c.gap()
    c.line(x_at(0), "Dirty bitmaps", size=14, attrs=' font-weight="bold"')
    _bitmap_legend(c)
    for bitmap in view.bitmaps:
        _bitmap(c, bitmap)
        c.gap(6)
    return _document(c, view, caption)


def _tree(c: Canvas, view: PlayView) -> None:
    tree = view.tree
    c.line(
        x_at(0),
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
            x_at(0),
            f"{tree.drawn} sptes drawn one by one; alike runs are summarised.",
            attrs=f' fill="{MUTED}"',
        )


def _document(c: Canvas, view: PlayView, caption: Caption) -> str:
    height = c.y + MARGIN
    title = esc(
        f"{caption.title or 'Untitled scenario'} · {caption.preset} · step {view.step} of {view.total}"
    )
    share = esc(caption.share_url)
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
