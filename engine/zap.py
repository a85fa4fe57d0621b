"""Zapping shadow pages (mmu.c): a whole table with everything under it, and every page of the VM as a memslot
deletion or move does it: 3.14/3.16's generation-based `kvm_mmu_invalidate_zap_all_pages`, or the older
`kvm_mmu_zap_all` that 6.x's model keeps for the same op.
"""

from __future__ import annotations

from itertools import compress

from engine.kvm import Kvm
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.mmu_spte import drop_parent_pte, drop_spte, drop_sptes
from engine.sched import cond_resched
from engine.shadow_page import KvmMmuPage
from engine.spte import (
    PRESENT_BY_LOW_BYTE,
    PT64_ENT_PER_PAGE,
    PT64_ROOT_LEVEL,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    is_large_pte,
    is_last_spte,
    is_shadow_present_pte,
    low_bytes,
)
from engine.tdp_iter import spte_to_child_sp
from engine.trace import MmuLoad, PrepareZapPage, ZapAll, traced
from engine.trace_tables import InvalidateZapAllPages, MmuFreeRoots
from engine.unsync import account_shadowed, kvm_unlink_unsync_page


def kvm_mmu_zap_all(kvm: Kvm) -> None:
    """Zap every shadow page, newest first, as a memslot deletion or move does; then reload the root."""
    _zap_all_pages(kvm)
    if kvm.shadow:
        _drop_shadow_roots(kvm)
        return
    kvm.root = kvm.alloc_root()
    if kvm.tp.on:
        kvm.tp.emit(MmuLoad(kvm.root.gfn, kvm.root.level))


@traced(ZapAll)
def _zap_all_pages(kvm: Kvm) -> None:
    pages = sorted(kvm.active_mmu_pages.values(), key=lambda sp: sp.serial, reverse=True)
    for sp in pages:
        cond_resched()
        kvm_mmu_prepare_zap_page(kvm, sp)
    kvm_flush_remote_tlbs(kvm, "kvm_mmu_commit_zap_page", under_mmu_lock=True)
    for sp in pages:
        kvm.free_mmu_page(sp)
    if kvm.tp.on:
        kvm.tp.emit(ZapAll(len(pages)))


def kvm_mmu_invalidate_zap_all_pages(kvm: Kvm) -> None:
    """The memslot zap of 3.14/3.16: move the valid generation on, ask every vCPU to reload its root, zap
    the old generation's pages oldest first, and commit them with one flush. A root some vCPU still has
    loaded is only marked invalid; each vCPU drops it before its next entry (mmu_free_roots), the last
    one frees it, zapped once more and committed with another flush, and the first one to load a root
    again builds the new one (the others find it in the hash)."""
    _zap_obsolete_pages(kvm)
    if kvm.shadow:
        _drop_shadow_roots(kvm)
        return
    old_root = kvm.root
    new_root: KvmMmuPage | None = None
    for vcpu in kvm.vcpus:  # KVM_REQ_MMU_RELOAD, handled before the vCPU's next entry
        old_root.root_count -= 1
        freed = not old_root.root_count
        tracing = kvm.tp.on
        if tracing:
            kvm.tp.enter(MmuFreeRoots.name)
            kvm.tp.emit(MmuFreeRoots(vcpu.id, old_root.root_count, freed))
        if freed:
            kvm_mmu_prepare_zap_page(kvm, old_root)
            kvm_mmu_commit_zap_page(kvm, [old_root])
        if tracing:
            kvm.tp.exit()
        if new_root is None:  # mmu_alloc_direct_roots: a hash miss for the first vCPU only
            new_root = kvm.alloc_mmu_page(0, PT64_ROOT_LEVEL)
            kvm.stat.mmu_cache_miss += 1
            if tracing:
                kvm.tp.emit(MmuLoad(new_root.gfn, new_root.level))
        new_root.root_count += 1
    if new_root is not None:
        kvm.root = new_root


def _drop_shadow_roots(kvm: Kvm) -> None:
    """Under shadow paging each vCPU drops its root (mmu_free_roots, the last user of a zapped root frees
    it) and loads the root of its CR3 again before it next enters the guest (kvm_mmu_load, which the
    shadow access path runs when a vCPU has no root)."""
    for vcpu in kvm.vcpus:
        root = vcpu.root
        vcpu.root = None
        if root is None or kvm.active_mmu_pages.get(root.serial) is not root:
            continue  # freed already, by a zap that did not wait for the vCPUs
        root.root_count -= 1
        if kvm.tp.on:
            kvm.tp.enter(MmuFreeRoots.name)
            kvm.tp.emit(MmuFreeRoots(vcpu.id, root.root_count, not root.root_count))
        if not root.root_count and root.invalid:
            kvm_mmu_commit_zap_page(kvm, [root])
        if kvm.tp.on:
            kvm.tp.exit()
    kvm.root = KvmMmuPage(0, PT64_ROOT_LEVEL, 0, -1)


@traced(InvalidateZapAllPages)
def _zap_obsolete_pages(kvm: Kvm) -> None:
    kvm.mmu_valid_gen += 1
    pages = sorted(kvm.active_mmu_pages.values(), key=lambda sp: sp.serial)
    if kvm.tp.on:
        kvm.tp.emit(InvalidateZapAllPages(kvm.mmu_valid_gen, len(pages)))
    invalid_list: list[KvmMmuPage] = []
    for sp in pages:  # kvm_zap_obsolete_pages: the oldest page first
        if sp.invalid:
            continue
        cond_resched()
        kvm_mmu_prepare_zap_page(kvm, sp)
        if not sp.root_count:
            invalid_list.append(sp)
    kvm_mmu_commit_zap_page(kvm, invalid_list)


def kvm_mmu_commit_zap_page(kvm: Kvm, invalid_list: list[KvmMmuPage]) -> None:
    """Flush every vCPU's TLB, then free the zapped pages: nothing may still translate through them."""
    if not invalid_list:
        return
    kvm_flush_remote_tlbs(kvm, "kvm_mmu_commit_zap_page", under_mmu_lock=True)
    for sp in invalid_list:
        kvm.free_mmu_page(sp)


@traced(PrepareZapPage)
def kvm_mmu_prepare_zap_page(kvm: Kvm, sp: KvmMmuPage) -> None:
    """Empty `sp` and unlink it from its parents; it stays in the hash, invalid, until committed. An
    indirect page no longer shadows its guest table (unaccount_shadowed), and stops being unsync."""
    kvm.stat.mmu_shadow_zapped += 1
    if kvm.tp.on:
        kvm.tp.emit(PrepareZapPage(sp.level, sp.gfn))
    if not sp.direct and not sp.invalid:
        account_shadowed(kvm, sp.gfn, -1)
    if sp.unsync:
        kvm_unlink_unsync_page(kvm, sp)
    # kvm_mmu_page_unlink_children
    if sp.level == PT_PAGE_TABLE_LEVEL:
        # Nothing but 4K leaves, none of them large: drop_spte for each present one, in one store.
        present = low_bytes(sp.spt).translate(PRESENT_BY_LOW_BYTE)
        entries = range(PT64_ENT_PER_PAGE)
        drop_sptes(kvm, sp, entries if present.count(1) == len(entries) else list(compress(entries, present)))
    else:
        _unlink_children(kvm, sp)
    # kvm_mmu_unlink_parents
    for parent, index in list(sp.parent_ptes):
        drop_parent_pte(kvm, sp, parent, index)
    sp.invalid = True


def _unlink_children(kvm: Kvm, sp: KvmMmuPage) -> None:
    """kvm_mmu_page_unlink_children of a table above level 1: each present entry zapped in turn."""
    for index, spte in enumerate(sp.spt):
        if spte & PT_PRESENT_MASK:  # the inner loop: raw R
            mmu_page_zap_pte(kvm, sp, index)


def mmu_page_zap_pte(kvm: Kvm, sp: KvmMmuPage, index: int) -> bool:
    """Clear one entry: drop a leaf (out of its rmap and the large-page count) or unlink the table it points
    at; returns whether anything was present."""
    spte = sp.spt[index]
    if not is_shadow_present_pte(spte):
        return False
    if is_last_spte(spte, sp.level):
        if is_large_pte(spte):
            kvm.stat.lpages -= 1
        drop_spte(kvm, sp, index)
    else:
        drop_parent_pte(kvm, spte_to_child_sp(kvm, spte), sp, index)
    return True


def handle_removed_pt(kvm: Kvm, table: KvmMmuPage, removed: list[KvmMmuPage]) -> None:
    """Zap a table that was just unlinked, then every table only it pointed at (their leaves included):
    6.x's handle_removed_pt, as the TDP MMU runs it when a pointer is zapped or replaced by a huge leaf.
    The tables are collected in `removed` for the caller to free once the TLBs are flushed."""
    children: list[KvmMmuPage] = []
    if table.level > PT_PAGE_TABLE_LEVEL:
        children = [
            spte_to_child_sp(kvm, spte)
            for spte in table.spt
            if spte & PT_PRESENT_MASK and not spte & PT_PAGE_SIZE_MASK  # the inner loop: raw R and PS
        ]
    kvm_mmu_prepare_zap_page(kvm, table)  # drops the leaves, unlinks the children and the parent pointer
    removed.append(table)
    for child in children:
        if not child.parent_ptes:
            handle_removed_pt(kvm, child, removed)
