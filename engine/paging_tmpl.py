"""paging_tmpl.h for 64-bit guests (the kernel's `paging64_*`, FNAME(...)): the shadow MMU's fault path,
and how a shadow page is kept in line with the guest table it shadows.

`page_fault` walks the guest's tables (engine.guest_pt, which sets their A/D bits and so marks the table
pages dirty), picks the level (the guest's page size, capped by mapping_level; 4K on a logged slot or
when the guest maps its own page table), and `fetch` builds the shadow path: an indirect shadow page for
each guest table on the way (engine.shadow_mmu's `kvm_mmu_get_page`, which write-protects the table's
gfn), direct pages under a guest huge page mapped small, dropping any huge spte met on the way in both
loops, then the leaf (`mmu_set_spte` with the guest's rights) and its prefetched neighbours.

There is no lockless fast path here: `fast_page_fault` runs only for direct MMUs (TDP, a guest with
paging off), never for a paging guest, so the seed's fast-path guard and caf6900f's lost pages cannot
arise under shadow paging. The kernel's `gpte_changed` re-reads the guest PTEs after write-protecting
each table, for a racing vCPU; steps here do not interleave inside a fault, so it always finds them
unchanged and is not modelled.
"""

from __future__ import annotations

from typing import Literal

from engine.guest_pt import (
    GuestWalker,
    gpte_access,
    gpte_to_gfn_lvl,
    is_present_gpte,
    protect_clean_gpte,
    walk_addr_generic,
)
from engine.kvm import Kvm, Vcpu
from engine.kvm_main import gfn_to_pfn, kvm_flush_remote_tlbs
from engine.mmu import (
    PFERR_PRESENT_MASK,
    PFERR_WRITE_MASK,
    RET_PF_EMULATE,
    RET_PF_FIXED,
    RET_PF_RETRY,
    RET_PF_SPURIOUS,
    RetPf,
    direct_pte_prefetch,
    link_shadow_page,
    mapping_level,
    mmu_set_spte,
    set_spte,
)
from engine.mmu_notifier import host_page_gfns, kvm_mmu_notifier_invalidate_range_start
from engine.mmu_spte import drop_large_spte, drop_parent_pte, drop_spte
from engine.shadow_mmu import PagingOps, kvm_mmu_get_page, vfn_of
from engine.shadow_page import ACC_USER_MASK, ACC_WRITE_MASK, KvmMmuPage
from engine.spte import (
    PAGE_SHIFT,
    PT64_BASE_ADDR_MASK,
    PT64_LEVEL_BITS,
    PT64_ROOT_LEVEL,
    PT_ACCESSED_MASK,
    PT_DIRECTORY_LEVEL,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    is_large_pte,
    is_last_spte,
    is_shadow_present_pte,
    pages_per_hpage,
    spte_to_pfn,
)
from engine.tdp_iter import for_each_shadow_entry, spte_to_child_sp
from engine.trace_shadow import (
    FetchShadow,
    InjectPageFault,
    Invlpg,
    PrefetchGptes,
    ShadowPageFault,
    ValidateDirectSpte,
    WalkAddr,
)
from engine.trace_tables import MmuNotifierRetry
from engine.unsync import for_each_gfn_indirect_valid_sp
from engine.zap import mmu_page_zap_pte

PFERR_USER_MASK = 1 << 2
PTE_PREFETCH_NUM = 8

# How a shadow page fault can end besides the RET_PF_* values: the guest's own walk failed (a #PF
# injected into the guest), or the gfn lies outside every memslot (MMIO: emulated, nothing mapped).
GUEST_PF: Literal["guest_pf"] = "guest_pf"
MMIO: Literal["mmio"] = "mmio"
ShadowFault = RetPf | Literal["guest_pf", "mmio"]


def walk_addr(kvm: Kvm, vcpu: Vcpu, gva: int, error_code: int) -> GuestWalker:
    """FNAME(walk_addr): the guest walk for a fault, with its A/D stores (marked dirty as the vCPU's)."""
    paging = vcpu.paging
    tables = kvm.guest
    if paging is None or tables is None:
        raise AssertionError("a shadow page fault on a VM without guest page tables")
    write = bool(error_code & PFERR_WRITE_MASK)
    user = bool(error_code & PFERR_USER_MASK)
    walker = walk_addr_generic(kvm, tables, paging, gva, write=write, user=user)
    if kvm.tp.on:
        kvm.tp.emit(
            WalkAddr(vcpu.id, gva, write, walker.gfn, walker.level, walker.pte_access, walker.fault,
                     len(walker.ad_updates))
        )
    return walker


def is_self_change_mapping(vcpu: Vcpu, walker: GuestWalker, user_fault: bool) -> tuple[bool, bool]:
    """Whether the guest maps, writably and with this one leaf, one of the tables it walked through:
    then a huge spte would be dropped as soon as those tables are shadowed, so map 4K at once. The
    second answer says the faulting gfn is itself such a table (write_fault_to_shadow_pgtable)."""
    paging = vcpu.paging
    cr0_wp = paging.cr0_wp if paging is not None else True
    if not (walker.pte_access & ACC_WRITE_MASK or (not cr0_wp and not user_fault)):
        return False, False
    if walker.gfn is None:
        return False, False
    mask = ~(pages_per_hpage(walker.level) - 1)
    self_changed = to_table = False
    for level in range(walker.level, walker.max_level + 1):
        differs = walker.gfn ^ walker.table_gfn[level - 1]
        self_changed |= not differs & mask
        to_table |= not differs
    return self_changed, to_table


def page_fault(kvm: Kvm, vcpu: Vcpu, gva: int, error_code: int) -> ShadowFault:
    """FNAME(page_fault): the guest walk, the level, the host page, then FNAME(fetch) under mmu_lock.

    Returns RET_PF_FIXED (the guest retries the access), RET_PF_EMULATE (the store is emulated: it hit
    a write-protected guest table), RET_PF_RETRY (the mmu notifier ran meanwhile), GUEST_PF or MMIO."""
    write_fault = bool(error_code & PFERR_WRITE_MASK)
    user_fault = bool(error_code & PFERR_USER_MASK)
    walker = walk_addr(kvm, vcpu, gva, error_code)
    gfn = walker.gfn
    if gfn is None:
        kvm.stat.pf_guest += 1
        if kvm.tp.on:
            kvm.tp.emit(InjectPageFault(vcpu.id, gva, walker.fault or 0))
        return GUEST_PF
    if kvm.era6 and page_fault_handle_page_track(kvm, gfn, error_code):
        # 6.x: a store to a write-tracked gfn (a shadowed table above level 1) that found a present spte
        # is emulated at once, before anything is mapped; the tables on the way are not flooding.
        shadow_page_table_clear_flood(kvm, vcpu, gva)
        if kvm.tp.on:
            kvm.tp.emit(
                ShadowPageFault(vcpu.id, gva, error_code, gfn, walker.level, PT_PAGE_TABLE_LEVEL, False,
                                False, RET_PF_EMULATE.value)
            )
        return RET_PF_EMULATE
    self_change, _ = is_self_change_mapping(vcpu, walker, user_fault)
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        return MMIO  # handle_abnormal_pfn: no memory there, the access is emulated as MMIO
    force_pt_level = walker.level < PT_DIRECTORY_LEVEL or slot.dirty_bitmap is not None or self_change
    level = PT_PAGE_TABLE_LEVEL
    if not force_pt_level:
        level = min(walker.level, mapping_level(kvm, slot, gfn))
        gfn &= ~(pages_per_hpage(level) - 1)
    mmu_seq = kvm.mmu_notifier_seq
    pfn, map_writable, copied = gfn_to_pfn(kvm, slot, gfn, write_fault)
    if copied:
        start, end = host_page_gfns(slot, pfn)
        kvm_mmu_notifier_invalidate_range_start(kvm, slot, start, end)
    paging = vcpu.paging
    cr0_wp = paging.cr0_wp if paging is not None else True
    if write_fault and not walker.pte_access & ACC_WRITE_MASK and not cr0_wp and not user_fault:
        # A supervisor write with CR0.WP clear: a kernel page, writable but not for user mode.
        walker.pte_access = (walker.pte_access | ACC_WRITE_MASK) & ~ACC_USER_MASK
    if kvm.mmu_notifier_seq != mmu_seq:
        if kvm.tp.on:
            kvm.tp.emit(MmuNotifierRetry(vcpu.id, gfn))
        return RET_PF_RETRY
    ret = fetch(kvm, vcpu, gva, walker, write_fault, level, gfn, pfn, map_writable)
    if not kvm.era6:
        kvm.stat.pf_fixed += 1  # 3.x counts every fault that reached fetch
    if kvm.tp.on:
        kvm.tp.emit(
            ShadowPageFault(vcpu.id, gva, error_code, walker.gfn, walker.level, level, force_pt_level,
                            self_change, ret.value)
        )
    return ret


def page_fault_handle_page_track(kvm: Kvm, gfn: int, error_code: int) -> bool:
    """6.x: whether a fault is a store through a present spte to a write-tracked gfn: one that holds a
    shadowed guest table above level 1 (account_shadowed write-tracks those; a level-1 one can be
    unsynced instead)."""
    if error_code & (PFERR_PRESENT_MASK | PFERR_WRITE_MASK) != PFERR_PRESENT_MASK | PFERR_WRITE_MASK:
        return False
    return any(sp.level > PT_PAGE_TABLE_LEVEL for sp in for_each_gfn_indirect_valid_sp(kvm, gfn))


def shadow_page_table_clear_flood(kvm: Kvm, vcpu: Vcpu, gva: int) -> None:
    """The shadow pages that translate `gva` are in use: none of them is being flooded."""
    if vcpu.root is not None:
        for _, sp, _, _ in for_each_shadow_entry(kvm, vfn_of(gva), vcpu.root):
            sp.write_flooding_count = 0


def fetch(
    kvm: Kvm,
    vcpu: Vcpu,
    gva: int,
    gw: GuestWalker,
    write_fault: bool,
    hlevel: int,
    gfn: int,
    pfn: int,
    map_writable: bool,
) -> RetPf:
    """FNAME(fetch): down the vCPU's shadow tables for `gva`, then the leaf; returns RET_PF_EMULATE when
    the write must be emulated, RET_PF_FIXED, or (6.x) RET_PF_SPURIOUS when the leaf was already the one
    it built, and then nothing is prefetched.

    Above the guest's leaf level each missing entry gets the indirect shadow page of the guest table it
    stands for; below it, down to `hlevel`, direct pages (a guest huge page mapped by smaller sptes),
    rebuilt when the guest's rights changed (validate_direct_spte). A huge spte met on the way is
    dropped, with a flush, in both loops: what 404381c5 later gave __direct_map."""
    root = vcpu.root
    if root is None:
        raise AssertionError("a shadow page fault on a vCPU without a root")
    vfn = vfn_of(gva)
    access = gw.pt_access
    direct_access = gw.pte_access
    sp, level = root, PT64_ROOT_LEVEL
    # Every fault of a shadow MMU comes down here: the per-level tests are raw bit tests.
    while level > gw.level:
        index = (vfn >> (PT64_LEVEL_BITS * (level - 1))) & 511
        sp.write_flooding_count = 0  # clear_sp_write_flooding_count
        if sp.spt[index] & PT_PAGE_SIZE_MASK:
            drop_large_spte(kvm, sp, index)
        if not sp.spt[index] & PT_PRESENT_MASK:
            table_gfn = gw.table_gfn[level - 2]
            child = kvm_mmu_get_page(kvm, vcpu, table_gfn, gva, level - 1, False, access, (sp, index))
            link_shadow_page(kvm, sp, index, child)
        sp, level = kvm.sp_by_pfn[(sp.spt[index] & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT], level - 1
    while level > hlevel:
        index = (vfn >> (PT64_LEVEL_BITS * (level - 1))) & 511
        sp.write_flooding_count = 0
        spte = sp.spt[index]
        if spte & PT_PRESENT_MASK and not spte & PT_PAGE_SIZE_MASK:
            if kvm.sp_by_pfn[(spte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT].access != direct_access:
                validate_direct_spte(kvm, sp, index, direct_access)
        elif spte & PT_PAGE_SIZE_MASK:
            drop_large_spte(kvm, sp, index)
        if not sp.spt[index] & PT_PRESENT_MASK:
            direct_gfn = gw.gfn & ~(pages_per_hpage(level) - 1) if gw.gfn is not None else gfn
            parent = (sp, index)
            child = kvm_mmu_get_page(kvm, vcpu, direct_gfn, gva, level - 1, True, direct_access, parent)
            link_shadow_page(kvm, sp, index, child)
        sp, level = kvm.sp_by_pfn[(sp.spt[index] & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT], level - 1
    index = (vfn >> (PT64_LEVEL_BITS * (level - 1))) & 511
    sp.write_flooding_count = 0
    leaf_access = gw.pte_access
    changed, emulate = mmu_set_spte(
        kvm, sp, index, write_fault, level, gfn, pfn, False, map_writable, leaf_access
    )
    if emulate:
        ret = RET_PF_EMULATE
    elif kvm.era6 and not changed:
        ret = RET_PF_SPURIOUS
    else:
        ret = RET_PF_FIXED
    if ret is not RET_PF_SPURIOUS:
        pte_prefetch(kvm, vcpu, gw, sp, index)
    if kvm.tp.on:
        kvm.tp.emit(FetchShadow(gva, gfn, level, emulate))
    return ret


def validate_direct_spte(kvm: Kvm, sp: KvmMmuPage, index: int, direct_access: int) -> None:
    """A direct page built for other rights than the guest now gives (its PDE's D bit went from clear to
    set, so a read-only page would wrongly keep writes out, or the reverse) is unlinked, with a flush."""
    spte = sp.spt[index]
    if not is_shadow_present_pte(spte) or is_large_pte(spte):
        return
    child = spte_to_child_sp(kvm, spte)
    if child.access == direct_access:
        return
    if kvm.tp.on:
        kvm.tp.emit(ValidateDirectSpte(sp.level, sp.gfn, index, child.access, direct_access))
    drop_parent_pte(kvm, child, sp, index)
    kvm_flush_remote_tlbs(kvm, "validate_direct_spte", under_mmu_lock=True)


# --- prefetch and update from guest PTEs ----------------------------------------------------------------


def prefetch_invalid_gpte(kvm: Kvm, sp: KvmMmuPage, index: int, gpte: int) -> bool:
    """A guest PTE that may not be mapped ahead of the guest (not present, or A clear: the guest has not
    used it, and mapping it would set nothing the guest could see): drop its spte and say so."""
    if is_present_gpte(gpte) and gpte & PT_ACCESSED_MASK:
        return False
    if sp.spt[index] & PT_PRESENT_MASK:  # clearing an empty entry changes nothing, and says nothing
        drop_spte(kvm, sp, index)
    return True


def prefetch_gpte(kvm: Kvm, vcpu: Vcpu, sp: KvmMmuPage, index: int, gpte: int, no_dirty_log: bool) -> bool:
    """Map entry `index` of the indirect level-1 page `sp` from its guest PTE, speculatively (no A).
    With `no_dirty_log` a writable mapping of a logged page is not made: the guest's first store there
    must fault and be logged."""
    if prefetch_invalid_gpte(kvm, sp, index, gpte):
        return False
    gfn = gpte_to_gfn_lvl(gpte, PT_PAGE_TABLE_LEVEL)
    paging = vcpu.paging
    pte_access = sp.access & gpte_access(gpte, paging.efer_nx if paging is not None else True)
    pte_access = protect_clean_gpte(pte_access, gpte)
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None or (no_dirty_log and pte_access & ACC_WRITE_MASK and slot.dirty_bitmap is not None):
        return False
    pfn = slot.gfn_to_pfn(gfn)
    if not slot.host_page_writable(pfn):  # gfn_to_pfn_memslot_atomic asks for a writable page
        return False
    mmu_set_spte(kvm, sp, index, False, PT_PAGE_TABLE_LEVEL, gfn, pfn, True, True, pte_access)
    return True


def pte_prefetch(kvm: Kvm, vcpu: Vcpu, gw: GuestWalker, sp: KvmMmuPage, index: int) -> None:
    """FNAME(pte_prefetch): after a 4K fault, map the empty entries of its aligned group of 8 from their
    guest PTEs (a direct page: __direct_pte_prefetch, from its position), stopping at the first that
    cannot be."""
    if sp.level > PT_PAGE_TABLE_LEVEL:
        return
    if sp.direct:
        direct_pte_prefetch(kvm, sp, index)
        return
    tables = kvm.guest
    if tables is None:
        return
    first = index & ~(PTE_PREFETCH_NUM - 1)
    done: list[int] = []
    skipped = ""
    for i in range(first, first + PTE_PREFETCH_NUM):
        if i == index or is_shadow_present_pte(sp.spt[i]):
            continue
        if not prefetch_gpte(kvm, vcpu, sp, i, tables.read_gpte(sp.gfn, i), True):
            skipped = f"entry {i:#x}"
            break
        done.append(gpte_to_gfn_lvl(tables.read_gpte(sp.gfn, i), PT_PAGE_TABLE_LEVEL))
    if kvm.tp.on:
        kvm.tp.emit(PrefetchGptes(sp.gfn, tuple(done), skipped))


def update_pte(kvm: Kvm, vcpu: Vcpu, sp: KvmMmuPage, index: int, gpte: int) -> None:
    """FNAME(update_pte): rebuild one spte of a level-1 page from the guest PTE just written."""
    prefetch_gpte(kvm, vcpu, sp, index, gpte, False)


def sync_page(kvm: Kvm, vcpu: Vcpu, sp: KvmMmuPage) -> tuple[int, int]:
    """FNAME(sync_page): each present spte of the unsync page `sp` rebuilt from its guest PTE, as a
    speculative set_spte that may not unsync (a page still shadowed stays read-only). Dropped when the
    PTE is gone or points elsewhere. Returns (kept, dropped).

    A page the guest never wrote comes back with the rights its PTE gives now: a dirty PTE over a page
    that GET_DIRTY_LOG just write-protected makes it writable again, and marks it dirty, though nobody
    wrote it (shadow-mmu.md §4, S4)."""
    tables = kvm.guest
    gfns = sp.gfns
    if tables is None or gfns is None:
        raise AssertionError("sync of a direct shadow page")
    paging = vcpu.paging
    efer_nx = paging.efer_nx if paging is not None else True
    kept = dropped = 0
    for i, spte in enumerate(sp.spt):
        if not is_shadow_present_pte(spte):
            continue
        gpte = tables.read_gpte(sp.gfn, i)
        if prefetch_invalid_gpte(kvm, sp, i, gpte):
            dropped += 1
            continue
        gfn = gpte_to_gfn_lvl(gpte, PT_PAGE_TABLE_LEVEL)
        pte_access = protect_clean_gpte(sp.access & gpte_access(gpte, efer_nx), gpte)
        if gfn != gfns[i]:
            drop_spte(kvm, sp, i)
            dropped += 1
            continue
        kept += 1
        host_writable = bool(spte & kvm.masks.host_writable_mask)
        set_spte(kvm, sp, i, PT_PAGE_TABLE_LEVEL, gfn, spte_to_pfn(spte), True, host_writable, False,
                 pte_access, can_unsync=False)
    return kept, dropped


def invlpg(kvm: Kvm, vcpu: Vcpu, gva: int) -> bool:
    """FNAME(invlpg): down the vCPU's shadow tables for `gva`; a leaf in an unsync page is zapped and
    rebuilt from its guest PTE now. Returns whether one was. The caller flushes the vCPU's TLB."""
    root = vcpu.root
    tables = kvm.guest
    if root is None or tables is None:
        return False
    updated = False
    for level, sp, index, spte in for_each_shadow_entry(kvm, vfn_of(gva), root):
        if is_last_spte(spte, level):
            if sp.unsync:
                if mmu_page_zap_pte(kvm, sp, index):
                    kvm_flush_remote_tlbs(kvm, "invlpg", under_mmu_lock=True)
                update_pte(kvm, vcpu, sp, index, tables.read_gpte(sp.gfn, index))
                updated = True
            break
        if not is_shadow_present_pte(spte) or not sp.unsync_children:
            break
    if kvm.tp.on:
        kvm.tp.emit(Invlpg(vcpu.id, gva, updated))
    return updated


# The hooks of a 64-bit guest's shadow MMU (paging64_init_context).
PAGING64 = PagingOps(sync_page=sync_page, update_pte=update_pte)
