"""Huge pages brought back when dirty logging stops, as later kernels do it (mmu/tdp_mmu.c, mmu/spte.c).

3.14/3.16 leave the 4K tables of a once-logged range alone until some slow-path fault happens to map a huge
leaf over one, which after "properly check last spte" rarely happens (writes to read-only 4K sptes are
fixed by the fast path). From 4.1 (3ea3b7fa) to 6.12, disabling logging zaps every table a huge leaf
could replace, so the next fault there maps it huge (`kvm_mmu_zap_collapsible_sptes`,
`huge_page_recovery = zap_collapsible`). Since 6.13 (13e2e4f62a4b) the TDP MMU replaces each such table
by a huge leaf at once, built from the first present leaf under it (`kvm_mmu_recover_huge_pages`,
`huge_page_recovery = in_place`): the next write there is a fast fault on the huge leaf.

Both walk the live tree pre-order over the slot's range: a pointer at level 3 is looked at before the
level-2 pointers under it, and one that goes takes them all with it.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.kvm import Kvm
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.memslot import KvmMemorySlot
from engine.mmu import kvm_mmu_max_mapping_level
from engine.rmap import rmap_add
from engine.sched import cond_resched
from engine.shadow_page import KvmMmuPage
from engine.spte import (
    KVM_NR_PAGE_SIZES,
    PAGE_SHIFT,
    PT64_ENT_PER_PAGE,
    PT_DIRECTORY_LEVEL,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    pages_per_hpage,
)
from engine.trace import RecoverHugePages, TdpMmuMakeHugeSpte, ZapCollapsibleSpte, ZapCollapsibleSptes, traced
from engine.zap import handle_removed_pt


def recover_huge_pages_on_disable(kvm: Kvm, slot: KvmMemorySlot) -> int:
    """Logging was switched off for `slot`: recover its huge pages the way the policy's kernel does."""
    if kvm.policy.huge_page_recovery == "in_place":
        return kvm_mmu_recover_huge_pages(kvm, slot)
    return kvm_mmu_zap_collapsible_sptes(kvm, slot)


def _collapsible(kvm: Kvm, sp: KvmMmuPage, slot: KvmMemorySlot, start: int, end: int) -> list[int]:
    """The indexes of `sp` inside [start, end) that hold a pointer a huge leaf could replace: the range
    must start in the slot (one that overlaps it without being held by it cannot be made huge), and
    kvm_mmu_max_mapping_level must allow the table's level there."""
    span = pages_per_hpage(sp.level)
    first = (max(start, sp.gfn) - sp.gfn) // span
    last = min((end - 1 - sp.gfn) // span, PT64_ENT_PER_PAGE - 1)
    out: list[int] = []
    if sp.level > KVM_NR_PAGE_SIZES:
        return out  # root entries are never leaves
    for index in range(first, last + 1):
        spte = sp.spt[index]
        if not spte & PT_PRESENT_MASK or spte & PT_PAGE_SIZE_MASK:
            continue  # nothing mapped, or already a huge leaf
        gfn = sp.gfn + index * span
        if start <= gfn < end and kvm_mmu_max_mapping_level(kvm, slot, gfn) >= sp.level:
            out.append(index)
    return out


def _pointers_in_range(sp: KvmMmuPage, start: int, end: int) -> list[int]:
    """The indexes of `sp` overlapping [start, end) that point at a table."""
    span = pages_per_hpage(sp.level)
    first = (max(start, sp.gfn) - sp.gfn) // span
    last = min((end - 1 - sp.gfn) // span, PT64_ENT_PER_PAGE - 1)
    return [
        index
        for index in range(first, last + 1)
        if sp.spt[index] & PT_PRESENT_MASK and not sp.spt[index] & PT_PAGE_SIZE_MASK
    ]


def _collapse_range(
    kvm: Kvm,
    sp: KvmMmuPage,
    slot: KvmMemorySlot,
    start: int,
    end: int,
    collapse: Callable[[KvmMmuPage, int], bool],
) -> int:
    """The walk both recoveries make (for_each_tdp_pte_min_level down to 2M): `collapse` is offered each
    pointer a huge leaf could replace and says whether it did; a pointer it leaves, or one that cannot be
    collapsed, is walked into, down to level 2. Returns how many pointers were collapsed."""
    done = 0
    collapsible = set(_collapsible(kvm, sp, slot, start, end))
    for index in _pointers_in_range(sp, start, end):
        cond_resched()
        if index in collapsible and collapse(sp, index):
            done += 1
        elif sp.level > PT_DIRECTORY_LEVEL:  # below level 2 there are only 4K leaves
            done += _collapse_range(kvm, kvm.child_sp(sp.spt[index]), slot, start, end, collapse)
    return done


# --- 4.1 to 6.12: zap, and let the next fault map it huge ------------------------------------------------


@traced(ZapCollapsibleSptes)
def kvm_mmu_zap_collapsible_sptes(kvm: Kvm, slot: KvmMemorySlot) -> int:
    """Zap every table pointer of the slot whose whole range a huge leaf could now map, so the next fault
    there builds the huge leaf again. Returns how many pointers were zapped. Each zap flushes the TLBs, as
    the TDP MMU's atomic zap does, with mmu_lock held."""

    def zap(sp: KvmMmuPage, index: int) -> bool:
        if kvm.tp.on:
            gfn = sp.gfn + index * pages_per_hpage(sp.level)
            max_level = kvm_mmu_max_mapping_level(kvm, slot, gfn)
            kvm.tp.enter(ZapCollapsibleSpte.name)
            kvm.tp.emit(ZapCollapsibleSpte(sp.level, sp.gfn, index, gfn, sp.spt[index], max_level))
            tdp_mmu_zap_spte_atomic(kvm, sp, index)
            kvm.tp.exit()
        else:
            tdp_mmu_zap_spte_atomic(kvm, sp, index)
        return True

    zapped = _collapse_range(kvm, kvm.root, slot, slot.base_gfn, slot.base_gfn + slot.npages, zap)
    if kvm.tp.on:
        kvm.tp.emit(ZapCollapsibleSptes(slot.id, zapped))
    return zapped


def tdp_mmu_zap_spte_atomic(kvm: Kvm, sp: KvmMmuPage, index: int) -> None:
    """Zap the pointer at (sp, index) with the whole tree of tables under it: every leaf dropped from its
    rmap and the large-page count, every table unlinked and freed, and one flush for the range."""
    removed: list[KvmMmuPage] = []
    handle_removed_pt(kvm, kvm.child_sp(sp.spt[index]), removed)
    kvm_flush_remote_tlbs(kvm, "zap_collapsible_spte_range", under_mmu_lock=True)
    for table in removed:
        kvm.free_mmu_page(table)


# --- 6.13 and later: replace the table by a huge leaf at once --------------------------------------------


def make_huge_spte(small_spte: int, level: int) -> int:
    """A huge leaf at `level` built from one of the leaves it replaces: the same bits, PS set, and the
    address cut down to the huge page's first pfn (a child at index i maps base + i pages)."""
    offset_mask = ((1 << (PAGE_SHIFT + 9 * (level - 1))) - 1) & ~((1 << PAGE_SHIFT) - 1)
    return (small_spte | PT_PAGE_SIZE_MASK) & ~offset_mask


def _first_present_leaf(kvm: Kvm, table: KvmMmuPage) -> int | None:
    """The first present leaf under `table` in gfn order (tdp_root_for_each_leaf_pte), at any level."""
    for spte in table.spt:
        if not spte & PT_PRESENT_MASK:
            continue
        if table.level == PT_PAGE_TABLE_LEVEL or spte & PT_PAGE_SIZE_MASK:
            return spte
        found = _first_present_leaf(kvm, kvm.child_sp(spte))
        if found is not None:
            return found
    return None


@traced(RecoverHugePages)
def kvm_mmu_recover_huge_pages(kvm: Kvm, slot: KvmMemorySlot) -> int:
    """Replace every table of the slot a huge leaf could now replace by that huge leaf; returns how many.
    No flush per replacement (each maps what the table's leaves mapped, or more); one for the memslot at
    the end if anything changed (kvm_flush_remote_tlbs_memslot)."""

    def make_huge(sp: KvmMmuPage, index: int) -> bool:
        child = _first_present_leaf(kvm, kvm.child_sp(sp.spt[index]))
        if child is None:  # a table with no present leaf is left alone (-ENOENT)
            return False
        tdp_mmu_make_huge_spte(kvm, sp, index, make_huge_spte(child, sp.level), child)
        return True

    recovered = _collapse_range(kvm, kvm.root, slot, slot.base_gfn, slot.base_gfn + slot.npages, make_huge)
    if kvm.tp.on:
        kvm.tp.emit(RecoverHugePages(slot.id, recovered))
    if recovered:
        kvm_flush_remote_tlbs(kvm, "kvm_mmu_recover_huge_pages", under_mmu_lock=True)
    return recovered


@traced(TdpMmuMakeHugeSpte)
def tdp_mmu_make_huge_spte(kvm: Kvm, sp: KvmMmuPage, index: int, huge: int, child_spte: int) -> None:
    """Store the huge leaf over the pointer at (sp, index) in one write (tdp_mmu_set_spte_atomic), then
    zap the table it replaced with everything under it (handle_removed_pt) and free it: the TDP MMU frees
    it after an RCU grace period, which nothing here can observe."""
    old = sp.spt[index]
    table = kvm.child_sp(old)
    table.parent_ptes.remove((sp, index))
    kvm.write_spte(sp, index, huge)
    gfn = sp.gfn + index * pages_per_hpage(sp.level)
    rmap_add(kvm, sp, index, gfn)
    kvm.stat.lpages += 1
    if kvm.tp.on:
        kvm.tp.emit(TdpMmuMakeHugeSpte(sp.level, sp.gfn, index, gfn, old, child_spte, huge))
    removed: list[KvmMmuPage] = []
    handle_removed_pt(kvm, table, removed)
    for freed in removed:
        kvm.free_mmu_page(freed)
