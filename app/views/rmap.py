"""Reverse maps and TLBs, capped."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from markupsafe import Markup

from engine.kvm import Kvm
from engine.rmap import pte_list
from engine.spte import (
    pages_per_hpage,
)

# Caps of the list panels.
MAX_RMAP_ROWS = 64
MAX_TLB_ROWS = 64


class RmapRow(NamedTuple):
    level: int
    gfn: int
    span: int
    entries: list[str]


@dataclass(slots=True)
class RmapSlotView:
    slot: int
    rows: list[RmapRow]
    total: int
    rows_html: Markup


_SIZE_NAMES = {1: "4K", 2: "2M", 3: "1G"}


def rmap_rows_html(rows: Iterable[RmapRow]) -> Markup:
    """The table rows of an rmap panel, built here rather than in the template: a panel is redrawn on
    every step, and its cells hold only numbers and fixed words, so there is nothing to escape."""
    out = []
    for r in rows:
        gfns = f"<code>{r.gfn:#x}</code>"
        if r.span > 1:
            gfns += f"–<code>{r.gfn + r.span - 1:#x}</code>"
        out.append(f"<tr><td>{_SIZE_NAMES[r.level]}</td><td>{gfns}</td><td>{', '.join(r.entries)}</td></tr>")
    return Markup("".join(out))


def rmap_views(kvm: Kvm) -> list[RmapSlotView]:
    out = []
    for slot in kvm.memslots:
        rows: list[RmapRow] = []
        total = 0
        for level, heads in enumerate(slot.rmap, start=1):
            total += len(heads)
            shift = 9 * (level - 1)
            # The lowest gfns first, without sorting every head of a big slot.
            for key in heapq.nsmallest(max(0, MAX_RMAP_ROWS - len(rows)), heads):
                gfn = ((slot.base_gfn >> shift) + key) << shift
                head = pte_list(heads[key])
                entries = [f"L{sp.level}[{index:#x}] in table {sp.gfn:#x}" for sp, index in head]
                rows.append(RmapRow(level, gfn, pages_per_hpage(level), entries))
        out.append(RmapSlotView(slot.id, rows, total, rmap_rows_html(rows)))
    return out


class TlbRow(NamedTuple):
    level: int
    gfn: int
    span: int
    pfn: int
    writable: bool
    dirty: bool


@dataclass(slots=True)
class TlbView:
    vcpu: int
    rows: list[TlbRow]
    total: int


def tlb_views(kvm: Kvm) -> list[TlbView]:
    out = []
    for vcpu in kvm.vcpus:
        entries = vcpu.tlb.entries()
        rows = [
            TlbRow(e.level, e.gfn, pages_per_hpage(e.level), e.pfn, e.writable, e.dirty)
            for e in entries[:MAX_TLB_ROWS]
        ]
        out.append(TlbView(vcpu.id, rows, len(entries)))
    return out
