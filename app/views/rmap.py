"""Reverse maps and TLBs, capped, with runs of alike rows collapsed into one.

A slot written page by page has 512 rmap heads per table and as many TLB entries, each like the next; one
row "512 × 4K, gfns 0x200–0x3ff, writable" says the same in one line. Rows are alike when their gfns follow
on, they are of one size and they allow the same: for an rmap head, one spte each, at consecutive indexes of
one table, equally writable; for a TLB entry, consecutive pfns, equally writable, equally dirty-cached.
TLB entries evenly spaced (every eighth page) are one row too, which says the distance.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from markupsafe import Markup

from app.views.tree_fold import COLLAPSE_MIN
from engine.kvm import Kvm
from engine.rmap import pte_list
from engine.spte import PAGE_SHIFT, PT64_LEVEL_BITS, is_writable_pte, pages_per_hpage
from engine.tlb import TlbEntry

# Caps of the list panels, in rows drawn (a collapsed row is one).
MAX_RMAP_ROWS = 64
MAX_TLB_ROWS = 64
# Rmap heads looked at per level to fill the rows: a run of a few tables' worth, without sorting every
# head of a big slot.
MAX_RMAP_HEADS = 4096


class RmapRow(NamedTuple):
    level: int
    gfn: int
    span: int
    entries: list[str]
    n: int = 1  # heads in this row: more than one when alike heads were collapsed
    writable: bool | None = None  # of the one spte of each head; None when a head has several or none
    # Where the one spte of each head lives (the table's serial, its gfn, the first index), or table -1.
    table: int = -1
    sp_gfn: int = 0
    first_index: int = 0
    # A repeating pattern of runs ("1 writable + 7 read-only"), and how many times it repeats; 0 if none.
    repeats: int = 0
    pattern: str = ""


@dataclass(slots=True)
class RmapSlotView:
    slot: int
    rows: list[RmapRow]
    total: int
    rows_html: Markup
    shown: int = 0  # heads the rows stand for


_SIZE_NAMES = {1: "4K", 2: "2M", 3: "1G"}


def rmap_rows_html(rows: Iterable[RmapRow]) -> Markup:
    """The table rows of an rmap panel, built here rather than in the template: a panel is redrawn on
    every step, and its cells hold only numbers and fixed words, so there is nothing to escape."""
    out = []
    for r in rows:
        last = r.gfn + r.n * r.span - 1
        gfns = f"<code>{r.gfn:#x}</code>"
        if last > r.gfn:
            gfns += f"–<code>{last:#x}</code>"
        sptes = ", ".join(r.entries)
        if r.repeats:
            sptes += f": {r.repeats} × ({r.pattern})"
        elif r.writable is not None:
            sptes += ", writable" if r.writable else ", read-only"
        size = _SIZE_NAMES[r.level]
        if r.n > 1:
            repeats = f' data-collapsed-repeats="{r.repeats}"' if r.repeats else ""
            out.append(
                f'<tr class="collapsed" data-collapsed="{r.n}"{repeats}><td>{r.n} × {size}</td>'
                f"<td>{gfns}</td><td>{sptes}</td></tr>"
            )
        else:
            out.append(f"<tr><td>{size}</td><td>{gfns}</td><td>{sptes}</td></tr>")
    return Markup("".join(out))


def _place(level: int, sp_gfn: int, first: int, n: int) -> str:
    indexes = f"{first:#x}" if n == 1 else f"{first:#x}–{first + n - 1:#x}"
    return f"L{level}[{indexes}] in table {sp_gfn:#x}"


def _follows(row: RmapRow, prev: RmapRow) -> bool:
    """`row` takes over where `prev` ends: the next gfns, the next indexes of the same table."""
    return (
        row.table >= 0
        and row.table == prev.table
        and row.level == prev.level
        and row.gfn == prev.gfn + prev.n * prev.span
        and row.first_index == prev.first_index + prev.n
    )


def _repeating(rows: list[RmapRow]) -> list[RmapRow]:
    """Runs repeating a pattern of two or three (every eighth page rewritten: 1 writable + 7 read-only),
    at least COLLAPSE_MIN times over adjacent heads of one table, become one row."""
    out: list[RmapRow] = []
    i = 0
    while i < len(rows):
        found = 0
        period = 0
        for period in (2, 3):
            keys = [(r.n, r.writable) for r in rows[i : i + period]]
            if len(keys) < period or len(set(keys)) < period or rows[i].table < 0:
                continue
            j = i + 1
            while (
                j < len(rows)
                and (rows[j].n, rows[j].writable) == keys[(j - i) % period]
                and _follows(rows[j], rows[j - 1])
            ):
                j += 1
            found = (j - i) // period
            if found >= COLLAPSE_MIN:
                break
            found = 0
        if not found:
            out.append(rows[i])
            i += 1
            continue
        group = rows[i : i + period * found]
        first = group[0]
        n = sum(r.n for r in group)
        pattern = " + ".join(f"{r.n} {'writable' if r.writable else 'read-only'}" for r in group[:period])
        entries = [_place(first.level, first.sp_gfn, first.first_index, n)]
        out.append(first._replace(entries=entries, n=n, writable=None, repeats=found, pattern=pattern))
        i += period * found
    return out


def rmap_views(kvm: Kvm) -> list[RmapSlotView]:
    out = []
    for slot in kvm.memslots:
        rows: list[RmapRow] = []
        total = 0
        for level, heads in enumerate(slot.rmap, start=1):
            total += len(heads)
            shift = 9 * (level - 1)
            span = pages_per_hpage(level)
            # The run of alike heads being read: its first head's row, and how many heads follow it. Rows
            # are made when a run ends, not per head: a slot of 512 heads per table reads thousands.
            first: RmapRow | None = None
            n = 0
            # The lowest gfns first, without sorting every head of a big slot.
            for key in heapq.nsmallest(MAX_RMAP_HEADS, heads):
                gfn = ((slot.base_gfn >> shift) + key) << shift
                head = pte_list(heads[key])
                if len(head) == 1:
                    ((sp, index),) = head
                    writable = is_writable_pte(sp.spt[index])
                    if (
                        first is not None
                        and sp.serial == first.table
                        and gfn == first.gfn + n * span
                        and index == first.first_index + n
                        and writable == first.writable
                    ):
                        n += 1
                        continue
                if first is not None:
                    rows.append(_run_row(first, n))
                    first = None
                if len(head) == 1:
                    first, n = RmapRow(level, gfn, span, [], 1, writable, sp.serial, sp.gfn, index), 1
                else:
                    rows.append(RmapRow(level, gfn, span, [_place(sp.level, sp.gfn, i, 1) for sp, i in head]))
            if first is not None:
                rows.append(_run_row(first, n))
        rows = _repeating(rows)[:MAX_RMAP_ROWS]
        shown = sum(r.n for r in rows)
        out.append(RmapSlotView(slot.id, rows, total, rmap_rows_html(rows), shown))
    return out


def _run_row(first: RmapRow, n: int) -> RmapRow:
    return first._replace(n=n, entries=[_place(first.level, first.sp_gfn, first.first_index, n)])


class TlbRow(NamedTuple):
    level: int
    gfn: int
    span: int
    pfn: int
    writable: bool
    dirty: bool
    n: int = 1  # entries in this row: more than one when alike entries were collapsed
    stride: int = 0  # pages from one entry to the next when they are evenly spaced, not adjacent
    gva: int = -1  # under shadow paging, the guest-virtual address the entry translates (its key)

    @property
    def step(self) -> int:
        return self.stride or self.span

    @property
    def last_gfn(self) -> int:
        return self.gfn + (self.n - 1) * self.step + self.span - 1

    @property
    def last_pfn(self) -> int:
        return self.pfn + (self.n - 1) * self.step + self.span - 1


@dataclass(slots=True)
class TlbView:
    vcpu: int
    rows: list[TlbRow]
    total: int
    shown: int = 0  # entries the rows stand for


def _adjacent_runs(entries: list[TlbEntry]) -> list[TlbRow]:
    rows: list[TlbRow] = []
    for e in entries:
        span = pages_per_hpage(e.level)
        if rows:
            prev = rows[-1]
            if (
                prev.level == e.level
                and e.gfn == prev.gfn + prev.n * span
                and e.pfn == prev.pfn + prev.n * span
                and (prev.writable, prev.dirty) == (e.writable, e.dirty)
            ):
                rows[-1] = prev._replace(n=prev.n + 1)
                continue
        rows.append(TlbRow(e.level, e.gfn, span, e.pfn, e.writable, e.dirty))
    return rows


def _evenly_spaced(rows: list[TlbRow]) -> list[TlbRow]:
    """Single entries at one distance from each other (every eighth page written), at least COLLAPSE_MIN
    of them, become one row that says the distance."""
    out: list[TlbRow] = []
    i = 0
    while i < len(rows):
        first = rows[i]
        j = i + 1
        alike = (first.level, first.writable, first.dirty)
        if first.n == 1 and j < len(rows):
            stride = rows[j].gfn - first.gfn
            while (
                j < len(rows)
                and rows[j].n == 1
                and (rows[j].level, rows[j].writable, rows[j].dirty) == alike
                and rows[j].gfn - rows[j - 1].gfn == stride
                and rows[j].pfn - rows[j - 1].pfn == stride
            ):
                j += 1
            if j - i >= COLLAPSE_MIN and stride > first.span:
                out.append(first._replace(n=j - i, stride=stride))
                i = j
                continue
        out.append(first)
        i += 1
    return out


def _shadow_tlb_rows(entries: list[dict[int, TlbEntry]]) -> list[TlbRow]:
    """A shadow-paging TLB, keyed by guest-virtual page: one row per entry, by level then address (the
    gfns behind adjacent addresses need not be adjacent, so nothing is folded)."""
    rows: list[TlbRow] = []
    for level, by_key in enumerate(entries, start=1):
        shift = PAGE_SHIFT + PT64_LEVEL_BITS * (level - 1)
        for key in sorted(by_key):
            e = by_key[key]
            span = pages_per_hpage(level)
            rows.append(TlbRow(level, e.gfn, span, e.pfn, e.writable, e.dirty, gva=key << shift))
            if len(rows) == MAX_TLB_ROWS:
                return rows
    return rows


def tlb_views(kvm: Kvm) -> list[TlbView]:
    out = []
    if kvm.shadow:
        for vcpu in kvm.vcpus:
            rows = _shadow_tlb_rows(list(vcpu.tlb.by_level))
            out.append(TlbView(vcpu.id, rows, sum(len(e) for e in vcpu.tlb.by_level), len(rows)))
        return out
    for vcpu in kvm.vcpus:
        entries = vcpu.tlb.entries()  # by level, then gfn
        rows = _evenly_spaced(_adjacent_runs(entries))[:MAX_TLB_ROWS]
        out.append(TlbView(vcpu.id, rows, len(entries), sum(r.n for r in rows)))
    return out
