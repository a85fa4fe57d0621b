"""Huge page splitting as later kernels do it (arch/x86/kvm/mmu/tdp_mmu.c, mmu/spte.c, mmu/mmu.c).

3.14/3.16 can only *drop* a huge leaf that stands in the way of a smaller mapping: the range then faults page
by page. The modern TDP MMU instead replaces it by a full table of smaller leaves that copy its permissions
(the same translation, only finer), so nothing that was mapped stops being mapped. It does so on the fault
path (`split_on_fault = split_in_place`) and, with eager page splitting, for the whole slot when logging
starts (`eager_split`), so that no huge page ever needs a fault to be split.

The model keeps the rmaps the TDP MMU does without (every new leaf goes into the rmap of its level) so that
the write-protect walks and the invariants read the same state whichever way a table was built.
"""

from __future__ import annotations

from itertools import repeat

from engine.kvm import Kvm
from engine.memslot import KvmMemorySlot
from engine.mmu_spte import make_nonleaf_spte, mmu_spte_set
from engine.rmap import gfn_to_rmap_slot, rmap_add, rmap_remove
from engine.sched import cond_resched
from engine.shadow_page import KvmMmuPage, kvm_mmu_page_get_gfn
from engine.spte import (
    PAGE_SHIFT,
    PT64_BASE_ADDR_MASK,
    PT64_ENT_PER_PAGE,
    PT64_LEVEL_BITS,
    PT_DIRECTORY_LEVEL,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    pages_per_hpage,
    spte_to_pfn,
)
from engine.trace import SlotTrySplitHugePages, TdpMmuSplitHugePage, traced

# Who asked for a split, as the trace names it.
SPLIT_ON_FAULT = "kvm_tdp_mmu_map"
SPLIT_EAGERLY = "tdp_mmu_split_huge_pages_root"


def make_huge_page_split_spte(huge_spte: int, child_level: int, index: int) -> int:
    """The `index`-th child of a huge leaf: the same bits (R, W, X, memory type, A, D, HW, MW), the pfn moved
    on by the pages the earlier children map, and PS only while the child is still a huge page."""
    pfn = spte_to_pfn(huge_spte) + index * pages_per_hpage(child_level)
    child = (huge_spte & ~PT64_BASE_ADDR_MASK) | (pfn << PAGE_SHIFT)
    if child_level == PT_PAGE_TABLE_LEVEL:
        child &= ~PT_PAGE_SIZE_MASK
    return child


def tdp_mmu_split_huge_page(kvm: Kvm, sp: KvmMmuPage, index: int, caller: str) -> KvmMmuPage:
    """Replace the huge leaf at (sp, index) by a new table of 512 leaves one level down; returns the table.

    The table is filled before it is linked, so a walk sees either the huge leaf or all of its children.
    No TLB flush: every child maps what the huge leaf mapped, with the same permissions, so a TLB entry
    cached from the huge leaf allows nothing the new leaves do not. The huge leaf leaves its rmap and the
    large-page count; the children join theirs (and the count, when they are 2M pages of a split 1G page).
    """
    huge = sp.spt[index]
    gfn = kvm_mmu_page_get_gfn(sp, index)
    child_level = sp.level - 1
    # tdp_mmu_alloc_sp: the TDP MMU never looks a table up in a hash, so an orphaned table for the same
    # range is not reused.
    child = kvm.alloc_mmu_page(gfn, child_level)
    step = pages_per_hpage(child_level)
    first = make_huge_page_split_spte(huge, child_level, 0)
    # mmu_spte_set for each child, in index order, as one store of the whole table.
    stride = step << PAGE_SHIFT
    entries = range(PT64_ENT_PER_PAGE)
    kvm.write_sptes(child, entries, list(range(first, first + PT64_ENT_PER_PAGE * stride, stride)))
    # The huge leaf lay wholly inside one slot, so every child's rmap is in that slot: the children are
    # rmap_add's empty-head case 512 times over, keyed by consecutive indexes (checked, not assumed).
    slot = gfn_to_rmap_slot(kvm, gfn)
    shift = PT64_LEVEL_BITS * (child_level - 1)
    heads = slot.rmap[child_level - 1]
    key = (gfn >> shift) - (slot.base_gfn >> shift)
    keys = range(key, key + PT64_ENT_PER_PAGE)
    if heads.keys().isdisjoint(keys):
        heads.update(zip(keys, zip(repeat(child), entries), strict=True))
    else:
        for i in entries:
            if key + i in heads:
                rmap_add(kvm, child, i, gfn + i * step)
            else:
                heads[key + i] = (child, i)
    if child_level > PT_PAGE_TABLE_LEVEL:
        kvm.stat.lpages += PT64_ENT_PER_PAGE
    rmap_remove(kvm, sp, index)
    kvm.stat.lpages -= 1
    child.parent_ptes.append((sp, index))
    new = make_nonleaf_spte(kvm, child)
    mmu_spte_set(kvm, sp, index, new)  # tdp_mmu_link_sp: the pointer replaces the leaf in one store
    if kvm.tp.on:
        kvm.tp.emit(TdpMmuSplitHugePage(sp.level, sp.gfn, index, gfn, huge, new, child_level, caller))
    return child


def _split_under(kvm: Kvm, sp: KvmMmuPage, start: int, end: int) -> int:
    """Split every huge leaf reachable from `sp` that overlaps [start, end), top level first: a 1G leaf
    becomes 2M leaves, and those overlapping the range are split in turn."""
    span = pages_per_hpage(sp.level)
    first = (max(start, sp.gfn) - sp.gfn) // span
    last = min((end - 1 - sp.gfn) // span, PT64_ENT_PER_PAGE - 1)
    split = 0
    for index in range(first, last + 1):
        spte = sp.spt[index]
        if not spte & PT_PRESENT_MASK:
            continue
        cond_resched()
        if spte & PT_PAGE_SIZE_MASK:
            child = tdp_mmu_split_huge_page(kvm, sp, index, SPLIT_EAGERLY)
            split += 1
            if child.level > PT_PAGE_TABLE_LEVEL:
                split += _split_under(kvm, child, start, end)
        elif sp.level > PT_DIRECTORY_LEVEL:  # a level-2 table points only at 4K tables: nothing huge below
            split += _split_under(kvm, kvm.child_sp(spte), start, end)
    return split


def split_huge_pages_in_range(kvm: Kvm, slot: KvmMemorySlot, start_gfn: int, end_gfn: int) -> int:
    """Eager splitting of [start_gfn, end_gfn) of `slot`: every huge leaf overlapping the range becomes 4K
    leaves with the same permissions. Returns how many huge leaves were split (a 1G page counts once, and
    each of its 2M children once more).

    Never flushes: the callers write-protect (or clear) the new 4K sptes next and flush then. Only the
    tree the vCPUs walk is searched, as the TDP MMU walks its roots; a huge leaf stranded in an orphaned
    table is left alone.
    """
    start = max(start_gfn, slot.base_gfn)
    end = min(end_gfn, slot.base_gfn + slot.npages)
    if start >= end:
        return 0
    return _split_under(kvm, kvm.root, start, end)


@traced(SlotTrySplitHugePages)
def kvm_mmu_slot_try_split_huge_pages(kvm: Kvm, slot: KvmMemorySlot) -> int:
    """Logging is being enabled with eager page splitting: split the whole slot to 4K before it is
    write-protected, so the first write to any page is a fast-path fault on a 4K spte."""
    split = split_huge_pages_in_range(kvm, slot, slot.base_gfn, slot.base_gfn + slot.npages)
    if kvm.tp.on:
        kvm.tp.emit(SlotTrySplitHugePages(slot.id, split))
    return split
