"""The spte inspector: every bit of one spte and its history."""

from __future__ import annotations

from dataclasses import dataclass

from app.explain import bit_meanings
from app.views.text import Location, hx, location_param
from app.views.tree import spte_kind
from engine.simulation import Simulation
from engine.spte import (
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    SpteMasks,
    pages_per_hpage,
    spte_flags,
    spte_to_pfn,
)

MAX_HISTORY = 100


@dataclass(slots=True)
class BitRow:
    bits: str
    name: str
    meaning: str
    value: str
    on: bool | None  # None for multi-bit fields


@dataclass(slots=True)
class HistoryRow:
    step: int
    old: int
    new: int
    text: str


@dataclass(slots=True)
class InspectorView:
    location: Location
    param: str
    exists: bool  # a table with that level and gfn exists now
    value: int
    kind: str
    gfn: int
    span: int
    bits: list[BitRow]
    history: list[HistoryRow]
    history_total: int
    orphan: bool

    @property
    def where(self) -> str:
        level, sp_gfn, index = self.location
        return f"L{level}[{hx(index)}] of the level-{level} table at gfn {hx(sp_gfn)}"


def _change_text(old: int, new: int, masks: SpteMasks) -> str:
    if not old & PT_PRESENT_MASK:
        return "created"
    if not new & PT_PRESENT_MASK:
        return "removed"
    gained = [f for f in spte_flags(new, masks) if f not in spte_flags(old, masks)]
    lost = [f for f in spte_flags(old, masks) if f not in spte_flags(new, masks)]
    parts = [f"+{f}" for f in gained] + [f"−{f}" for f in lost]
    if spte_to_pfn(old) != spte_to_pfn(new):
        parts.append("new target")
    return " ".join(parts) or "rewritten"


def inspector_view(sim: Simulation, location: Location, history: list[tuple[int, int, int]]) -> InspectorView:
    level, sp_gfn, index = location
    sp = None
    for candidate in sim.kvm.mmu_page_hash.get((sp_gfn, level), ()):
        if not candidate.invalid:
            sp = candidate
            break
    masks = sim.kvm.masks
    value = sp.spt[index] if sp is not None else masks.nonpresent
    span = pages_per_hpage(level)
    leaf = level == 1 or bool(value & PT_PAGE_SIZE_MASK)
    bits: list[BitRow] = []
    for bits_text, name, meaning, mask in bit_meanings(masks):
        if name == "MT":
            bits.append(BitRow(bits_text, name, meaning, str(value >> 3 & 7), None))
        elif name == "pfn":
            pfn = spte_to_pfn(value)
            what = meaning if value & PT_PRESENT_MASK else "—"
            if value & PT_PRESENT_MASK and not leaf:
                child = sim.kvm.sp_by_pfn.get(pfn)
                what = f"child table: level {child.level}, gfn {hx(child.gfn)}" if child else "child table"
            elif value & PT_PRESENT_MASK:
                what = f"host page of gfn {hx(sp_gfn + index * span)}"
            bits.append(BitRow(bits_text, name, what, hx(pfn), None))
        elif mask is not None:
            bits.append(BitRow(bits_text, name, meaning, "1" if value & mask else "0", bool(value & mask)))
    rows = [
        HistoryRow(step, old, new, _change_text(old, new, masks)) for step, old, new in history[-MAX_HISTORY:]
    ]
    return InspectorView(
        location=location,
        param=location_param(location),
        exists=sp is not None,
        value=value,
        kind=spte_kind(value, level) if value & PT_PRESENT_MASK else "none",
        gfn=sp_gfn + index * span,
        span=span,
        bits=bits,
        history=rows,
        history_total=len(history),
        orphan=sp is not None and sp is not sim.kvm.root and not sp.parent_ptes,
    )
