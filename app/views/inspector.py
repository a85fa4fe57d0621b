"""The spte inspector: every bit of one spte and its history, each change of it bit by bit."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup

from app.explain.meanings import bit_meanings
from app.treehtml import changed_bits_html
from app.views.text import Location, hx, location_param
from app.views.tree_fold import spte_kind
from engine.shadow_page import kvm_mmu_page_get_gfn
from engine.simulation import Simulation
from engine.spte import (
    SpteMasks,
    flag_word,
    is_last_spte,
    is_shadow_present_pte,
    level_name,
    pages_per_hpage,
    spte_to_pfn,
)
from engine.tdp_iter import find_shadow_page, spte_to_child_sp

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
    text: str  # what else changed: "created", "removed", "new target", or "" when the bits say it all
    bits: Markup  # each flag the change set or cleared, as the tree's chips (`W 1→0`)


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


def _history_row(step: int, level: int, old: int, new: int, masks: SpteMasks) -> HistoryRow:
    """One change: its flags bit by bit when the spte stayed present and the same kind, else that it was
    created, removed, or replaced by another kind of entry."""
    if not is_shadow_present_pte(old):
        return HistoryRow(step, old, new, "created", Markup(""))
    if not is_shadow_present_pte(new):
        return HistoryRow(step, old, new, "removed", Markup(""))
    if spte_kind(old, level) != spte_kind(new, level):
        now = "a table pointer" if spte_kind(new, level) == "ptr" else f"a {level_name(level)} leaf"
        return HistoryRow(step, old, new, f"replaced by {now}", Markup(""))
    bits = changed_bits_html(flag_word(new, masks), flag_word(old, masks))
    moved = spte_to_pfn(old) != spte_to_pfn(new)
    text = "new target" if moved else "" if bits else "rewritten"
    return HistoryRow(step, old, new, text, bits)


def inspector_view(sim: Simulation, location: Location, history: list[tuple[int, int, int]]) -> InspectorView:
    level, sp_gfn, index = location
    sp = find_shadow_page(sim.kvm, sp_gfn, level)
    masks = sim.kvm.masks
    value = sp.spt[index] if sp is not None else masks.nonpresent
    span = pages_per_hpage(level)
    present = is_shadow_present_pte(value)
    bits: list[BitRow] = []
    for bits_text, name, meaning, mask in bit_meanings(masks):
        if name == "MT":
            bits.append(BitRow(bits_text, name, meaning, str(value >> 3 & 7), None))
        elif name == "pfn":
            pfn = spte_to_pfn(value)
            what = meaning if present else "—"
            if present and not is_last_spte(value, level):
                child = spte_to_child_sp(sim.kvm, value)
                what = f"child table: level {child.level}, gfn {hx(child.gfn)}"
            elif present and sp is not None:
                what = f"host page of gfn {hx(kvm_mmu_page_get_gfn(sp, index))}"
            bits.append(BitRow(bits_text, name, what, hx(pfn), None))
        elif mask is not None:
            bits.append(BitRow(bits_text, name, meaning, "1" if value & mask else "0", bool(value & mask)))
    rows = [_history_row(step, level, old, new, masks) for step, old, new in history[-MAX_HISTORY:]]
    return InspectorView(
        location=location,
        param=location_param(location),
        exists=sp is not None,
        value=value,
        kind=spte_kind(value, level) if present else "none",
        # An indirect shadow page's entry maps what the guest PTE said, not what its position says.
        gfn=kvm_mmu_page_get_gfn(sp, index) if sp is not None else sp_gfn + index * span,
        span=span,
        bits=bits,
        history=rows,
        history_total=len(history),
        orphan=sp is not None and sp is not sim.kvm.root and not sp.parent_ptes,
    )
