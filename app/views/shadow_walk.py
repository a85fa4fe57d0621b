"""The shadow-paging panel's walk strip (app.views.shadow): the step's guest-virtual address through the
guest's tables (read with nothing stored, engine.shadow_query), the gfn and its memslot, the host page,
and the shadow spte that maps it now; and how the step's accesses ended, for the narration and predict
mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.views.guest_tables import GUEST_LEVEL_NAMES, guest_bits
from app.views.text import hx
from engine.kvm import Kvm
from engine.ops.access import ReadStep, WriteStep
from engine.ops.guest_paging import InvlpgStep, WriteGpteStep
from engine.shadow_cpu import shadow_leaf
from engine.shadow_page import ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK
from engine.shadow_query import GuestPeek
from engine.simulation import StepResult
from engine.spte import PAGE_SHIFT, PT_PRESENT_MASK, flag_word, level_name, pages_per_hpage, spte_to_pfn
from engine.trace_shadow import ShadowGuestAccess


def rights_text(access: int) -> str:
    """mmu.h's ACC_* rights as letters: R always (a present entry reads), W, U, X where granted."""
    out = "R"
    out += "W" if access & ACC_WRITE_MASK else "-"
    out += "U" if access & ACC_USER_MASK else "-"
    out += "X" if access & ACC_EXEC_MASK else "-"
    return out


@dataclass(slots=True)
class StripHop:
    level: int
    name: str  # PML4, PDPT, PD, PT
    table_gfn: int
    index: int
    pte: int
    bits: list[tuple[str, bool]]
    leaf: bool
    state: str  # "table", "leaf", "absent", "no memory"


@dataclass(slots=True)
class WalkStrip:
    """The step's access through both translations: the guest's walk, the gfn and its memslot, the host
    page, and the shadow spte that maps the address now (or why none does)."""

    what: str  # "read", "write", "store of a guest PTE", "invlpg"
    vcpu: int
    gva: int
    hops: list[StripHop]
    gfn: int | None
    slot: int | None
    rights: str
    fault: str  # why the guest walk fails ("" when it succeeds)
    pfn: int | None
    spte_text: str
    spte_word: int | None
    spte_user: bool
    spte_level: int | None


def step_address(op: object) -> tuple[str, int, int, bool] | None:
    """(what, vcpu, gva, write) of a step that touches one guest-virtual address, else None."""
    if isinstance(op, WriteStep | ReadStep):
        write = isinstance(op, WriteStep)
        return ("write" if write else "read"), op.vcpu, op.address, write
    if isinstance(op, WriteGpteStep):
        return "store of a guest PTE", op.vcpu, (op.table << PAGE_SHIFT) + op.index * 8, True
    if isinstance(op, InvlpgStep):
        return "invlpg", op.vcpu, op.gva, False
    return None


def walk_strip(kvm: Kvm, what: str, vcpu: int, gva: int, write: bool, peek: GuestPeek) -> WalkStrip:
    hops = []
    for hop in peek.hops:
        reached = peek.ok and hop is peek.hops[-1]
        if not hop.in_memory:
            state = "no memory"
        elif not hop.pte & PT_PRESENT_MASK:
            state = "absent"
        else:
            state = "leaf" if reached or (hop is peek.hops[-1] and peek.fault == "rights") else "table"
        name = GUEST_LEVEL_NAMES[hop.level]
        bits = guest_bits(hop.pte)
        leafy = state == "leaf"
        hops.append(StripHop(hop.level, name, hop.table_gfn, hop.index, hop.pte, bits, leafy, state))
    slot = kvm.gfn_to_memslot(peek.gfn) if peek.gfn is not None else None
    at = GUEST_LEVEL_NAMES[peek.leaf_level]
    fault = {
        "not present": f"the guest's {at} entry is not present: the guest takes a #PF",
        "no memory": f"the guest's {at} at {hx(peek.hops[-1].table_gfn)} is outside every memslot:"
        " the walk cannot read it",
        "rights": "the guest's PTEs deny the write (W clear, CR0.WP set): the guest takes a #PF",
        "": "",
    }[peek.fault]
    if peek.ok and slot is None:
        fault = f"gfn {hx(peek.gfn or 0)} is in no memslot: the access is emulated as MMIO"
    leaf = shadow_leaf(kvm, kvm.vcpus[vcpu], gva >> PAGE_SHIFT)
    pfn: int | None = None
    spte_word: int | None = None
    spte_user = False
    spte_level: int | None = None
    if leaf is not None:
        sp, index, spte = leaf
        offset = (gva >> PAGE_SHIFT) & (pages_per_hpage(sp.level) - 1)
        pfn = spte_to_pfn(spte) + offset
        spte_word = flag_word(spte, kvm.masks)
        spte_user = bool(spte & kvm.masks.user_mask)
        spte_level = sp.level
        owner = f"direct table {hx(sp.gfn)}" if sp.direct else f"the shadow of guest table {hx(sp.gfn)}"
        spte_text = f"L{sp.level}[{hx(index)}] of {owner}: {level_name(sp.level)} spte {hx(spte)}"
    else:
        spte_text = "no shadow spte maps it: the next access takes a #PF exit"
        if slot is not None and peek.gfn is not None:
            pfn = slot.gfn_to_pfn(peek.gfn)
    return WalkStrip(
        what, vcpu, gva, hops, peek.gfn, slot.id if slot is not None else None,
        rights_text(peek.access) if peek.ok or peek.fault == "rights" else "", fault, pfn, spte_text,
        spte_word, spte_user, spte_level,
    )  # fmt: skip



_BY_VIA = {"tlb": "none", "walk": "none", "fault": "fixed", "emulated": "emulated", "guest_pf": "guest_pf"}
_RANK = ("none", "fixed", "emulated", "mmio", "guest_pf", "livelock")

def shadow_outcome(result: StepResult) -> str:
    """The answer key: from the step's guest_access events when it was traced, else from its fault count
    (which cannot tell an emulated store from a fixed fault, nor a #PF handed to the guest)."""
    if result.events is None:
        return "fixed" if result.fault_counts.get("slow", 0) else "none"
    outcomes = {_BY_VIA.get(e.via, e.via) for e in result.events if isinstance(e, ShadowGuestAccess)}
    return max(outcomes, key=_RANK.index, default="none") if outcomes <= set(_RANK) else "fixed"


