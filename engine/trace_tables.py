"""Trace events of the passes that change whole tables rather than one spte, and of the host's side:
huge page splitting and recovery (6.x mmu/tdp_mmu.c), the memslot zap of 3.14/3.16's obsolete
generations (mmu.c), and the mmu notifiers (virt/kvm/kvm_main.c). Typed values like every event of
engine.trace, whose `Event` they extend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.trace import Event

# --- huge pages in later kernels (mmu/tdp_mmu.c, mmu/spte.c, mmu/mmu.c) --------------------------------


@dataclass(frozen=True, slots=True)
class TdpMmuSplitHugePage(Event):
    """A huge leaf replaced by a full table of smaller leaves with the same permissions, linked without a
    TLB flush: on the fault path (kvm_tdp_mmu_map) or eagerly (tdp_mmu_split_huge_pages_root)."""

    name: ClassVar[str] = "tdp_mmu_split_huge_page"
    level: int
    sp_gfn: int
    index: int
    gfn: int
    old: int
    new: int
    child_level: int
    caller: str


@dataclass(frozen=True, slots=True)
class SlotTrySplitHugePages(Event):
    """Eager page splitting when logging starts: how many huge leaves of the slot were split."""

    name: ClassVar[str] = "kvm_mmu_slot_try_split_huge_pages"
    slot: int
    split: int


@dataclass(frozen=True, slots=True)
class ZapCollapsibleSpte(Event):
    """One non-leaf spte zapped after logging stopped, because a huge leaf could now map its range."""

    name: ClassVar[str] = "zap_collapsible_spte_range"
    level: int
    sp_gfn: int
    index: int
    gfn: int
    old: int
    max_level: int


@dataclass(frozen=True, slots=True)
class ZapCollapsibleSptes(Event):
    name: ClassVar[str] = "kvm_mmu_zap_collapsible_sptes"
    slot: int
    zapped: int


# --- recovering huge pages in place (6.13 and later: mmu/tdp_mmu.c, mmu/spte.c) ------------------------


@dataclass(frozen=True, slots=True)
class TdpMmuMakeHugeSpte(Event):
    """recover_huge_pages_range found a table a huge leaf could replace: tdp_mmu_make_huge_spte took the
    first present leaf under it (`child`), set PS and cut its address down to the huge boundary (`new`),
    and the leaf replaced the pointer (`old`) in one store, the table freed with everything under it."""

    name: ClassVar[str] = "tdp_mmu_make_huge_spte"
    level: int
    sp_gfn: int
    index: int
    gfn: int
    old: int
    child: int
    new: int


@dataclass(frozen=True, slots=True)
class RecoverHugePages(Event):
    """kvm_mmu_recover_huge_pages: logging stopped, so every table of the slot a huge leaf could replace
    was replaced in place (`recovered`), with one TLB flush for the memslot if any was."""

    name: ClassVar[str] = "kvm_mmu_recover_huge_pages"
    slot: int
    recovered: int


# --- mmu notifiers (virt/kvm/kvm_main.c, mmu.c) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MmuNotifierInvalidateRangeStart(Event):
    """The host changed its page table for a range of the VM's memory (here: a write broke a shared
    copy-on-write page, so the host copied it): every spte mapping a gfn of the range is dropped, through
    the rmaps of every level (kvm_unmap_hva_range / kvm_unmap_rmapp in 3.x, kvm_unmap_gfn_range in 6.x),
    with a TLB flush if any was, and the invalidation sequence moves on."""

    name: ClassVar[str] = "kvm_mmu_notifier_invalidate_range_start"
    gfn_start: int
    gfn_end: int
    dropped: int
    flush: bool


@dataclass(frozen=True, slots=True)
class MmuNotifierRetry(Event):
    """The fault in flight saw that an invalidation ran while it looked up the host page
    (mmu_notifier_retry in 3.x, is_page_fault_stale in 6.x): it maps nothing and lets the guest fault
    again."""

    name: ClassVar[str] = "mmu_notifier_retry"
    vcpu: int
    gfn: int


# --- the memslot zap of 3.14/3.16: obsolete generations (mmu.c) ----------------------------------------


@dataclass(frozen=True, slots=True)
class InvalidateZapAllPages(Event):
    """kvm_mmu_invalidate_zap_all_pages (the tracepoint of the same name): the valid generation moves on,
    every vCPU is asked to reload its root, and the shadow pages of the old generation are zapped oldest
    first (kvm_zap_obsolete_pages). A root still loaded by a vCPU is only marked invalid."""

    name: ClassVar[str] = "kvm_mmu_invalidate_zap_all_pages"
    mmu_valid_gen: int
    pages: int


@dataclass(frozen=True, slots=True)
class MmuFreeRoots(Event):
    """mmu_free_roots, as a vCPU handles its reload request before its next entry: it drops its reference
    to the old root; the last one frees an invalid root (zapped again and committed, with a flush)."""

    name: ClassVar[str] = "mmu_free_roots"
    vcpu: int
    root_count: int
    freed: bool
