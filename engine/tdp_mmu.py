"""The 6.x TDP MMU (arch/x86/kvm/mmu/tdp_mmu.c, with the spte builders of mmu/spte.c it calls): its
fault path, huge page splitting, and huge page recovery, beside the 3.x rmap-based paths of mmu.c.

**The fault path.** `kvm_tdp_mmu_map` walks down like `__direct_map`, but a huge leaf above the target
level is split in place (`split_on_fault = split_in_place`) into a full table of smaller leaves with its
permissions, and the walk goes on down through the new table: nothing that was mapped stops being
mapped. 3.14/3.16 can only *drop* such a leaf, so the range then faults page by page.

**Eager splitting.** With `eager_split`, enabling logging splits every huge leaf of the slot first
(`kvm_mmu_slot_try_split_huge_pages`), so that no huge page ever needs a fault to be split.

**Huge page recovery.** 3.14/3.16 leave the 4K tables of a once-logged range alone until some slow-path
fault happens to map a huge leaf over one. From 4.1 (3ea3b7fa) to 6.12, disabling logging zaps every
table a huge leaf could replace, so the next fault there maps it huge (`kvm_mmu_zap_collapsible_sptes`,
`huge_page_recovery = zap_collapsible`). Since 6.13 (13e2e4f62a4b) the TDP MMU replaces each such table
by a huge leaf at once, built from the first present leaf under it (`kvm_mmu_recover_huge_pages`,
`huge_page_recovery = in_place`): the next write there is a fast fault on the huge leaf. Both walk the
live tree pre-order over the slot's range: a pointer at level 3 is looked at before the level-2 pointers
under it, and one that goes takes them all with it.

The model keeps the rmaps the TDP MMU does without (every new leaf goes into the rmap of its level) so
that the write-protect walks and the invariants read the same state whichever way a table was built, and
the leaf itself is installed by the same `mmu_set_spte` as the rmap-based MMU's, so a policy mixing the
generations' switches behaves as it always did.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat

from engine.kvm import Kvm, Vcpu
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.memslot import KvmMemorySlot
from engine.mmu import (
    RET_PF_RETRY,
    RetPf,
    direct_map_link,
    direct_map_start,
    direct_map_target_level,
    kvm_mmu_max_mapping_level,
)
from engine.mmu_spte import make_nonleaf_spte, mmu_spte_set
from engine.rmap import gfn_to_rmap_slot, rmap_add, rmap_remove
from engine.sched import cond_resched
from engine.shadow_page import KvmMmuPage, kvm_mmu_page_get_gfn
from engine.spte import (
    KVM_NR_PAGE_SIZES,
    PAGE_SHIFT,
    PT64_BASE_ADDR_MASK,
    PT64_ENT_PER_PAGE,
    PT64_LEVEL_BITS,
    PT_DIRECTORY_LEVEL,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    is_large_pte,
    is_last_spte,
    is_shadow_present_pte,
    pages_per_hpage,
    spte_to_pfn,
)
from engine.tdp_iter import for_each_shadow_entry, for_each_tdp_pte, spte_to_child_sp
from engine.trace import DirectMap, traced
from engine.trace_tables import (
    RecoverHugePages,
    SlotTrySplitHugePages,
    TdpMmuMakeHugeSpte,
    TdpMmuSplitHugePage,
    ZapCollapsibleSpte,
    ZapCollapsibleSptes,
)
from engine.zap import handle_removed_pt

# --- the fault path --------------------------------------------------------------------------------------


@traced(DirectMap)
def kvm_tdp_mmu_map(
    kvm: Kvm, vcpu: Vcpu, write: bool, map_writable: bool, level: int, gfn: int, pfn: int
) -> RetPf:
    """The TDP MMU's mapping walk: down from the root, building tables, splitting a huge leaf met above
    `level` in place, and installing the leaf at `level`. Returns RET_PF_FIXED, or RET_PF_SPURIOUS when
    the leaf it built is the one already there. Traced under `__direct_map`'s name, the walk the result
    has always shown for either MMU."""
    ret = RET_PF_RETRY
    for cur, sp, index, spte in for_each_shadow_entry(kvm, gfn, direct_map_start(kvm, gfn, level)):
        if cur == level:
            ret = direct_map_target_level(kvm, sp, index, level, write, map_writable, gfn, pfn)
            break
        if is_large_pte(spte):
            tdp_mmu_split_huge_page(kvm, sp, index, SPLIT_ON_FAULT)
        elif not is_shadow_present_pte(spte):
            direct_map_link(kvm, sp, index, cur, gfn)
    if kvm.tp.on:
        kvm.tp.emit(DirectMap(gfn, level, pfn, write, map_writable, ret != RET_PF_RETRY))
    return ret


# --- huge page splitting ---------------------------------------------------------------------------------


# Who asked for a split, as the trace names it.
SPLIT_ON_FAULT = "kvm_tdp_mmu_map"
SPLIT_EAGERLY = "tdp_mmu_split_huge_pages_root"


def make_huge_page_split_spte(huge_spte: int, child_level: int, index: int) -> int:
    """The `index`-th child of a huge leaf: the same bits (R, W, X, memory type, A, D, HW, MW), the pfn moved
    on by the pages the earlier children map, and PS only while the child is still a huge page."""
    pfn = spte_to_pfn(huge_spte) + index * pages_per_hpage(child_level)
    child = (huge_spte & ~PT64_BASE_ADDR_MASK) | (pfn << PAGE_SHIFT)
    if child_level == PT_PAGE_TABLE_LEVEL:
        child &= ~PT_PAGE_SIZE_MASK  # a 4K leaf
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
    split = 0
    # tdp_mmu_split_huge_pages_root: down to 2M, the lowest level a huge leaf lives at. A leaf split here
    # becomes a table the walk then goes down into, so a 1G leaf's 2M children are split in turn.
    for it in for_each_tdp_pte(kvm, kvm.root, start, end, PT_DIRECTORY_LEVEL):
        cond_resched()
        if is_large_pte(it.old_spte):
            tdp_mmu_split_huge_page(kvm, it.sp, it.index, SPLIT_EAGERLY)
            split += 1
    return split


@traced(SlotTrySplitHugePages)
def kvm_mmu_slot_try_split_huge_pages(kvm: Kvm, slot: KvmMemorySlot) -> int:
    """Logging is being enabled with eager page splitting: split the whole slot to 4K before it is
    write-protected, so the first write to any page is a fast-path fault on a 4K spte."""
    split = split_huge_pages_in_range(kvm, slot, slot.base_gfn, slot.base_gfn + slot.npages)
    if kvm.tp.on:
        kvm.tp.emit(SlotTrySplitHugePages(slot.id, split))
    return split


# --- huge page recovery ----------------------------------------------------------------------------------


def recover_huge_pages_on_disable(kvm: Kvm, slot: KvmMemorySlot) -> int:
    """Logging was switched off for `slot`: recover its huge pages the way the policy's kernel does."""
    if kvm.policy.huge_page_recovery == "in_place":
        return kvm_mmu_recover_huge_pages(kvm, slot)
    return kvm_mmu_zap_collapsible_sptes(kvm, slot)


def _collapse_range(kvm: Kvm, slot: KvmMemorySlot, collapse: Callable[[KvmMmuPage, int], bool]) -> int:
    """The walk both recoveries make (for_each_tdp_pte_min_level down to 2M over the slot): `collapse`
    is offered each pointer whose whole range a huge leaf could map (its range starts in the slot, and
    kvm_mmu_max_mapping_level allows the table's level there) and says whether it replaced it; a pointer
    it leaves, or one that cannot be collapsed, is walked into. Returns how many pointers were
    collapsed."""
    start, end = slot.base_gfn, slot.base_gfn + slot.npages
    done = 0
    for it in for_each_tdp_pte(kvm, kvm.root, start, end, PT_DIRECTORY_LEVEL):
        if is_last_spte(it.old_spte, it.level):
            continue  # already a huge leaf
        cond_resched()
        sp, level = it.sp, it.level
        if (
            level <= KVM_NR_PAGE_SIZES  # root entries are never leaves
            and start <= it.gfn
            and kvm_mmu_max_mapping_level(kvm, slot, it.gfn) >= level
            and collapse(sp, it.index)
        ):
            done += 1
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

    zapped = _collapse_range(kvm, slot, zap)
    if kvm.tp.on:
        kvm.tp.emit(ZapCollapsibleSptes(slot.id, zapped))
    return zapped


def tdp_mmu_zap_spte_atomic(kvm: Kvm, sp: KvmMmuPage, index: int) -> None:
    """Zap the pointer at (sp, index) with the whole tree of tables under it: every leaf dropped from its
    rmap and the large-page count, every table unlinked and freed, and one flush for the range."""
    removed: list[KvmMmuPage] = []
    handle_removed_pt(kvm, spte_to_child_sp(kvm, sp.spt[index]), removed)
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
    end = table.gfn + PT64_ENT_PER_PAGE * pages_per_hpage(table.level)
    for it in for_each_tdp_pte(kvm, table, table.gfn, end):
        if is_last_spte(it.old_spte, it.level):
            return it.old_spte
    return None


@traced(RecoverHugePages)
def kvm_mmu_recover_huge_pages(kvm: Kvm, slot: KvmMemorySlot) -> int:
    """Replace every table of the slot a huge leaf could now replace by that huge leaf; returns how many.
    No flush per replacement (each maps what the table's leaves mapped, or more); one for the memslot at
    the end if anything changed (kvm_flush_remote_tlbs_memslot)."""

    def make_huge(sp: KvmMmuPage, index: int) -> bool:
        child = _first_present_leaf(kvm, spte_to_child_sp(kvm, sp.spt[index]))
        if child is None:  # a table with no present leaf is left alone (-ENOENT)
            return False
        tdp_mmu_make_huge_spte(kvm, sp, index, make_huge_spte(child, sp.level), child)
        return True

    recovered = _collapse_range(kvm, slot, make_huge)
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
    table = spte_to_child_sp(kvm, old)
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
