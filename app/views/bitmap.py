"""The dirty bitmaps: rows of cells (dirty, clean, written but not dirty, lost), alike rows folded.

After the migration's verdict the pages it lost are drawn on their slot's grid (`data-lost="1"`, ✕), also
once logging has stopped and the slot has no bitmap any more: then the cells stand for pages, not bits, and
carry `data-gfn` instead of the contract's `data-dirty-gfn`."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import NamedTuple

from markupsafe import Markup

from app.budget_bytes import CELL_ROWS
from engine.memslot import KvmMemorySlot
from engine.simulation import Simulation

# Bitmap rows are this many pages wide.
ROW = 32


class Cell(NamedTuple):
    gfn: int
    dirty: bool
    written: bool
    lost: bool = False


@dataclass(slots=True)
class BitmapRow:
    """Either up to ROW cells starting at `gfn`, drawn one by one (`drawn`, with the row's dirty bits
    and written-not-dirty bits as masks, bit k for gfn + k), or a folded run of `count` pages."""

    gfn: int
    count: int
    drawn: bool = False
    dirty_mask: int = 0
    written_mask: int = 0
    dirty_pages: int = 0
    written_pages: int = 0
    # Pages the migration's verdict found lost, bit k for gfn + k (drawn rows only).
    lost_mask: int = 0

    @property
    def cells(self) -> list[Cell]:
        if not self.drawn:
            return []
        return [
            Cell(
                self.gfn + k,
                bool(self.dirty_mask >> k & 1),
                bool(self.written_mask >> k & 1),
                bool(self.lost_mask >> k & 1),
            )
            for k in range(self.count)
        ]

    @property
    def last_gfn(self) -> int:
        return self.gfn + self.count - 1

    @property
    def run_text(self) -> str:
        """A folded row in words, as the player and the SVG export both write it."""
        state = self.state
        if state == "clean":
            what = "all clean"
        elif state == "dirty":
            what = "all dirty ●"
        else:
            what = f"{self.dirty_pages} dirty ●, {self.written_pages} written, not dirty !"
        return f"{self.gfn:#x}–{self.last_gfn:#x}: {self.count} pages, {what}"

    @property
    def state(self) -> str:
        if self.dirty_pages == self.count:
            return "dirty"
        if self.written_pages == self.count:
            return "written"
        if not self.dirty_pages and not self.written_pages:
            return "clean"
        return "mixed"


@dataclass(slots=True)
class BitmapView:
    slot: int
    base_gfn: int
    npages: int
    logged: bool
    rows: list[BitmapRow]
    dirty: list[int]
    dirty_count: int
    written: list[int]
    written_count: int
    lost: list[int]
    # The rows as HTML, written once when the view is built (see rows_html).
    html: str = ""


@lru_cache(maxsize=CELL_ROWS)
def _cells_html(
    gfn: int, count: int, dirty_mask: int, written_mask: int, lost_mask: int = 0, logged: bool = True
) -> str:
    """One drawn row's cells. A row's bits seldom change from one step to the next, so rows are kept
    by value: stepping redraws the bitmap from what it drew before."""
    cells = []
    for k in range(count):
        cell = gfn + k
        if not logged:
            # No bitmap any more (logging stopped at the verdict): pages, with the lost ones marked.
            if lost_mask >> k & 1:
                cells.append(f'<i data-gfn="{cell:#x}" data-lost="1" title="gfn {cell:#x}: lost">✕</i>')
            else:
                cells.append(f'<i data-gfn="{cell:#x}"></i>')
        elif lost_mask >> k & 1:
            cells.append(
                f'<i data-dirty-gfn="{cell:#x}" data-dirty="{dirty_mask >> k & 1}" data-lost="1"'
                f' title="gfn {cell:#x}: lost to the migration">✕</i>'
            )
        elif written_mask >> k & 1:
            cells.append(
                f'<i data-dirty-gfn="{cell:#x}" data-dirty="{dirty_mask >> k & 1}" data-written="1"'
                f' title="gfn {cell:#x}: written, not dirty: lost">!</i>'
            )
        elif dirty_mask >> k & 1:
            cells.append(f'<i data-dirty-gfn="{cell:#x}" data-dirty="1" title="gfn {cell:#x}: dirty">●</i>')
        else:
            cells.append(f'<i data-dirty-gfn="{cell:#x}" data-dirty="0"></i>')
    return "".join(cells)


def rows_html(rows: list[BitmapRow], logged: bool = True) -> Markup:
    """The bitmap's rows as HTML, written here rather than in a template: a bitmap is hundreds of cells,
    and every value in them is a number or a fixed word, so there is nothing to escape."""
    out: list[str] = []
    for row in rows:
        label = f'<span class="bm-label">{row.gfn:#x}</span>'
        if not row.drawn:
            state = row.state
            out.append(
                f'<div class="bm-run bm-{state}" data-dirty-run="{row.gfn:#x}-{row.last_gfn:#x}"'
                f' data-state="{state}">{label} {row.run_text}</div>'
            )
            continue
        cells = _cells_html(row.gfn, row.count, row.dirty_mask, row.written_mask, row.lost_mask, logged)
        out.append(f'<div class="bm-row">{label}{cells}</div>')
    return Markup("\n".join(out))  # only numbers and fixed words: nothing to escape


def bitmap_view(sim: Simulation, slot: KvmMemorySlot, max_cells: int, lost: Iterable[int] = ()) -> BitmapView:
    """The slot's dirty bitmap as rows of cells; in a slot larger than `max_cells` pages, rows whose
    pages are all alike fold into runs, and past `max_cells` drawn cells every row folds."""
    lost_here = [g for g in lost if slot.contains(g)]
    logged = slot.dirty_bitmap is not None
    base, npages = slot.base_gfn, slot.npages
    if slot.dirty_bitmap is None and not lost_here:
        return BitmapView(slot.id, base, npages, False, [], [], 0, [], 0, lost_here)
    # Logging stopped with the verdict: draw the slot's pages all the same, to show the lost ones.
    bitmap = slot.dirty_bitmap if slot.dirty_bitmap is not None else bytearray(-(-npages // 64) * 8)
    pending = sim.checker.pending.get(slot.id, {}) if logged else {}
    written = sorted(g for g in pending if not slot.test_dirty(g))
    written_rows: dict[int, int] = {}  # row -> its written-not-dirty bits
    for g in written:
        row = (g - base) // ROW
        written_rows[row] = written_rows.get(row, 0) | 1 << ((g - base) % ROW)
    lost_rows: dict[int, int] = {}  # row -> its lost pages
    for g in lost_here:
        row = (g - base) // ROW
        lost_rows[row] = lost_rows.get(row, 0) | 1 << ((g - base) % ROW)
    dirty_count = int.from_bytes(bitmap, "little").bit_count()
    small = npages <= max_cells
    rows: list[BitmapRow] = []
    drawn = 0
    # One 32-bit word per row, read in one go (the bitmap is little-endian longs, so also 32-bit words).
    words = array("I", bytes(bitmap))
    if sys.byteorder == "big":
        words.byteswap()
    full = (1 << ROW) - 1
    for row, offset in enumerate(range(0, npages, ROW)):
        width = min(ROW, npages - offset)
        gfn = base + offset
        row_full = full if width == ROW else (1 << width) - 1
        word = words[row] & row_full
        written_mask = written_rows.get(row, 0) if written_rows else 0
        lost_mask = lost_rows.get(row, 0) if lost_rows else 0
        if not small and not written_mask and not lost_mask and word in (0, row_full):
            dirty = width if word else 0
            last = rows[-1] if rows else None
            if last is not None and not last.drawn and last.state == ("dirty" if dirty else "clean"):
                last.count += width
                last.dirty_pages += dirty
            else:
                rows.append(BitmapRow(gfn, width, dirty_pages=dirty))
            continue
        if small or drawn < max_cells:
            rows.append(BitmapRow(gfn, width, True, word, written_mask, lost_mask=lost_mask))
            drawn += width
            continue
        dirty = word.bit_count()
        written_here = written_mask.bit_count()
        last = rows[-1] if rows else None
        if last is not None and not last.drawn and last.state == "mixed":
            last.count += width
            last.dirty_pages += dirty
            last.written_pages += written_here
        else:
            rows.append(BitmapRow(gfn, width, dirty_pages=dirty, written_pages=written_here))
    dirty_list = list(islice(slot.iter_dirty_gfns(), 256)) if dirty_count else []
    return BitmapView(
        slot.id,
        base,
        npages,
        logged,
        rows,
        dirty_list,
        dirty_count,
        written[:256],
        len(written),
        lost_here,
        rows_html(rows, logged),
    )
