"""The shadow-paging half of 3.14/3.16 mmu.c: indirect shadow pages, a root per CR3, unsync pages and
their sync, and the emulated writes to shadowed guest tables.

Under shadow paging KVM builds, for every guest page table it has walked through, an indirect shadow
page (`kvm_mmu_get_page` with `direct` false) keyed by the table's gfn and the role it was reached with.
Creating one write-protects the table's gfn wherever it is mapped (`rmap_write_protect`, with
`pt_protect`: the seed's second caller of `spte_write_protect`) and accounts it (`account_shadowed`),
so that no huge spte maps it from then on. A store to such a gfn then faults: a level-1 page may be
unsynced instead (engine.unsync) and synced at the next CR3 load or INVLPG (`kvm_mmu_sync_roots`,
`mmu_sync_children`); any other store is emulated and its entry brought up to date here
(`kvm_mmu_pte_write`), or, after three of them, the page is zapped (write flooding).

The paging_tmpl.h side (the guest walk's users, `FNAME(fetch)`, `FNAME(sync_page)`) is engine.paging_tmpl,
which is built on this module; this one calls back into it as the kernel does, through the function
pointers of `struct kvm_mmu` (`PagingOps`, which engine.paging_tmpl fills in and the VM holds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.kvm import Kvm, Vcpu
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.memslot import KvmMemorySlot
from engine.mmu import kvm_mmu_max_mapping_level
from engine.mmu_spte import drop_spte
from engine.rmap import pte_list
from engine.shadow_page import ACC_ALL, KvmMmuPage
from engine.spte import (
    PT64_BASE_ADDR_MASK,
    PT64_LEVEL_BITS,
    PT64_ROOT_LEVEL,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
    is_last_spte,
    is_shadow_present_pte,
    pages_per_hpage,
)
from engine.tdp_iter import spte_to_child_sp
from engine.trace_shadow import MmuPteWrite, SetCr3, ShadowGetPage, SyncPage, SyncRoots, ZapCollapsibleRmap
from engine.unsync import (
    account_shadowed,
    for_each_gfn_indirect_valid_sp,
    kvm_mmu_mark_parents_unsync,
    kvm_unlink_unsync_page,
)
from engine.write_protect import kvm_mmu_slot_gfn_write_protect
from engine.zap import kvm_mmu_commit_zap_page, kvm_mmu_prepare_zap_page, mmu_page_zap_pte

# An spte's permission bits, whose loss a remote TLB may not keep (PT64_PERM_MASK: W, U, and NX inverted).
PT64_PERM_MASK = PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK | (1 << 63)

# Emulated writes to one upper-level shadowed table, without a fault through it in between, after which
# its shadow page is zapped: the guest is probably reusing the page for something else.
WRITE_FLOODING_LIMIT = 3


@dataclass(frozen=True, slots=True)
class PagingOps:
    """The guest-paging hooks of `struct kvm_mmu` the shadow MMU calls: bring an unsync page in line with
    its guest table (returns the sptes kept and dropped), and rebuild one spte from a PTE just written."""

    sync_page: Callable[[Kvm, Vcpu, KvmMmuPage], tuple[int, int]]
    update_pte: Callable[[Kvm, Vcpu, KvmMmuPage, int, int], None]


def paging_ops(kvm: Kvm) -> PagingOps:
    ops = kvm.paging_ops
    if not isinstance(ops, PagingOps):
        raise AssertionError("a shadow MMU without its guest-paging hooks")
    return ops


def rmap_write_protect(kvm: Kvm, gfn: int) -> bool:
    """Write-protect every spte mapping `gfn`, at every level, for page-table protection (pt_protect: MW
    goes too, so only an unsync may make them writable again); returns whether a flush is needed."""
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        return False
    return kvm_mmu_slot_gfn_write_protect(kvm, slot, gfn, PT_PAGE_TABLE_LEVEL)


def kvm_mmu_get_page(
    kvm: Kvm,
    vcpu: Vcpu,
    gfn: int,
    gva: int,
    level: int,
    direct: bool,
    access: int,
    parent: tuple[KvmMmuPage, int] | None,
) -> KvmMmuPage:
    """The shadow page for (gfn, role), from the hash or new. A new indirect one write-protects its gfn
    (flushing if that removed any W), syncs the unsync level-1 pages of that gfn first if it is an
    upper-level table, and accounts the gfn so that no huge spte maps its range from now on."""
    level_1 = kvm.mmu_page_hash.get((gfn, PT_PAGE_TABLE_LEVEL), ())
    need_sync = any(sp.unsync and not sp.invalid for sp in level_1)
    for sp in list(kvm.mmu_page_hash.get((gfn, level), ())):
        if sp.invalid or sp.direct != direct or sp.access != access:
            continue
        if sp.unsync and kvm_sync_page_transient(kvm, vcpu, sp):
            break
        if parent is not None:
            sp.parent_ptes.append(parent)
        if sp.unsync_children:
            kvm.mmu_sync_requests.add(vcpu.id)  # KVM_REQ_MMU_SYNC
            kvm_mmu_mark_parents_unsync(kvm, sp)
        elif sp.unsync:
            kvm_mmu_mark_parents_unsync(kvm, sp)
        sp.write_flooding_count = 0
        if kvm.tp.on:
            kvm.tp.emit(ShadowGetPage(level, gfn, False, direct, access, sp.gva))
        return sp
    kvm.stat.mmu_cache_miss += 1
    sp = kvm.alloc_mmu_page(gfn, level)
    sp.direct = direct
    sp.access = access
    sp.gva = gva & ~((pages_per_hpage(level + 1) << 12) - 1)
    if parent is not None:
        sp.parent_ptes.append(parent)
    if kvm.tp.on:
        kvm.tp.emit(ShadowGetPage(level, gfn, True, direct, access, sp.gva))
    if not direct:
        sp.gfns = [0] * len(sp.spt)
        if rmap_write_protect(kvm, gfn):
            kvm_flush_remote_tlbs(kvm, "kvm_mmu_get_page", under_mmu_lock=True)
        if level > PT_PAGE_TABLE_LEVEL and need_sync:
            kvm_sync_pages(kvm, vcpu, gfn)
        account_shadowed(kvm, gfn)
    return sp


# --- sync ----------------------------------------------------------------------------------------------


def __kvm_sync_page(kvm: Kvm, vcpu: Vcpu, sp: KvmMmuPage, clear_unsync: bool) -> bool:
    """Bring an unsync page back in line with its guest table; True when it was zapped instead (nothing
    of it was left present), for the caller to commit."""
    if clear_unsync:
        kvm_unlink_unsync_page(kvm, sp)
    kept, dropped = paging_ops(kvm).sync_page(kvm, vcpu, sp)
    zapped = not kept
    if kvm.tp.on:
        kvm.tp.emit(SyncPage(sp.level, sp.gfn, kept, dropped, zapped))
    if dropped:
        # The kernel counts these in tlbs_dirty, which its next remote flush honours: flush now.
        kvm_flush_remote_tlbs(kvm, "sync_page", under_mmu_lock=True)
    if zapped:
        kvm_mmu_prepare_zap_page(kvm, sp)
        return True
    vcpu.tlb.flush()  # kvm_mmu_flush_tlb
    return False


def kvm_sync_page_transient(kvm: Kvm, vcpu: Vcpu, sp: KvmMmuPage) -> bool:
    """Sync a page found in the hash without making it synced (it stays unsync); True if it was zapped."""
    zapped = __kvm_sync_page(kvm, vcpu, sp, clear_unsync=False)
    if zapped:
        _commit(kvm, [sp])
    return zapped


def kvm_sync_pages(kvm: Kvm, vcpu: Vcpu, gfn: int) -> None:
    """Sync every unsync page of `gfn` (its gfn is about to be write-protected as an upper table)."""
    invalid: list[KvmMmuPage] = []
    for sp in list(for_each_gfn_indirect_valid_sp(kvm, gfn)):
        if sp.unsync and __kvm_sync_page(kvm, vcpu, sp, clear_unsync=True):
            invalid.append(sp)
    _commit(kvm, invalid)


def _commit(kvm: Kvm, pages: list[KvmMmuPage]) -> None:
    """kvm_mmu_commit_zap_page for the zapped pages no vCPU still uses as a root."""
    kvm_mmu_commit_zap_page(kvm, [sp for sp in pages if not sp.root_count])


def mmu_unsync_walk(kvm: Kvm, parent: KvmMmuPage, out: list[KvmMmuPage]) -> None:
    """The unsync pages under `parent`, found through the unsync_children marks (which are cleared where
    they no longer lead to one)."""
    marks = parent.unsync_children
    if not marks:
        return
    for index in sorted(marks):
        spte = parent.spt[index]
        if not is_shadow_present_pte(spte) or is_last_spte(spte, parent.level):
            marks.discard(index)
            continue
        child = spte_to_child_sp(kvm, spte)
        mmu_unsync_walk(kvm, child, out)
        if child.unsync and child not in out:
            out.append(child)
        if not child.unsync and not child.unsync_children:
            marks.discard(index)


def _clear_parents(sp: KvmMmuPage) -> None:
    """mmu_pages_clear_parents: a synced page no longer makes its parents' entries unsync."""
    for parent, index in sp.parent_ptes:
        marks = parent.unsync_children
        if marks and index in marks and not sp.unsync and not sp.unsync_children:
            marks.discard(index)
            if not marks:
                _clear_parents(parent)


def mmu_sync_children(kvm: Kvm, vcpu: Vcpu, parent: KvmMmuPage) -> int:
    """Write-protect and sync every unsync page under `parent`; returns how many were synced."""
    pages: list[KvmMmuPage] = []
    mmu_unsync_walk(kvm, parent, pages)
    if not pages:
        return 0
    protected = False
    for sp in pages:
        protected |= rmap_write_protect(kvm, sp.gfn)
    if protected:
        kvm_flush_remote_tlbs(kvm, "mmu_sync_children", under_mmu_lock=True)
    invalid: list[KvmMmuPage] = []
    for sp in pages:
        if sp.unsync and __kvm_sync_page(kvm, vcpu, sp, clear_unsync=True):
            invalid.append(sp)
        _clear_parents(sp)
    _commit(kvm, invalid)
    return len(pages)


def kvm_mmu_sync_roots(kvm: Kvm, vcpu: Vcpu) -> None:
    """Sync every unsync page reachable from the vCPU's root: on each CR3 load (and KVM_REQ_MMU_SYNC)."""
    kvm.mmu_sync_requests.discard(vcpu.id)
    root = vcpu.root
    synced = mmu_sync_children(kvm, vcpu, root) if root is not None else 0
    if kvm.tp.on:
        kvm.tp.emit(SyncRoots(vcpu.id, synced))


# --- roots ---------------------------------------------------------------------------------------------


def kvm_mmu_load(kvm: Kvm, vcpu: Vcpu) -> None:
    """mmu_alloc_shadow_roots, then sync: the root for the vCPU's CR3 (the shadow page of the guest's
    PML4, found in the hash when another vCPU or an earlier CR3 load built it), and a clean TLB."""
    paging = vcpu.paging
    if paging is None:
        raise AssertionError("a shadow-paging vCPU without guest paging state")
    created = not any(
        not sp.invalid and not sp.direct for sp in kvm.mmu_page_hash.get((paging.cr3, PT64_ROOT_LEVEL), ())
    )
    root = kvm_mmu_get_page(kvm, vcpu, paging.cr3, 0, PT64_ROOT_LEVEL, False, ACC_ALL, None)
    root.root_count += 1
    vcpu.root = root
    if vcpu.id == 0:
        kvm.root = root
    if kvm.tp.on:
        kvm.tp.emit(SetCr3(vcpu.id, paging.cr3, created))
    kvm_mmu_sync_roots(kvm, vcpu)
    vcpu.tlb.flush()


def mmu_free_roots(kvm: Kvm, vcpu: Vcpu) -> None:
    """The vCPU lets go of its root; the last user of a zapped root frees it."""
    root = vcpu.root
    vcpu.root = None
    if root is None:
        return
    root.root_count -= 1
    if not root.root_count and root.invalid:
        kvm_mmu_commit_zap_page(kvm, [root])


def kvm_mmu_new_cr3(kvm: Kvm, vcpu: Vcpu) -> None:
    """MOV CR3: drop the old root, load the new one (and sync under it) before the next instruction."""
    mmu_free_roots(kvm, vcpu)
    kvm_mmu_load(kvm, vcpu)


# --- emulated writes to shadowed guest tables ------------------------------------------------------------


def detect_write_flooding(sp: KvmMmuPage) -> bool:
    """Level-1 pages are never flooded (they can be unsynced instead); others after three writes."""
    if sp.level == PT_PAGE_TABLE_LEVEL:
        return False
    sp.write_flooding_count += 1
    return sp.write_flooding_count >= WRITE_FLOODING_LIMIT


def need_remote_flush(old: int, new: int) -> bool:
    """Whether replacing `old` by `new` takes away something another vCPU's TLB may hold."""
    if not is_shadow_present_pte(old):
        return False
    if not is_shadow_present_pte(new):
        return True
    if (old ^ new) & PT64_BASE_ADDR_MASK:
        return True
    nx = 1 << 63
    return bool((old ^ nx) & ~(new ^ nx) & PT64_PERM_MASK)


def kvm_mmu_pte_write(kvm: Kvm, vcpu: Vcpu, gfn: int, index: int, old_gpte: int, new_gpte: int) -> None:
    """The emulator stored `new_gpte` at entry `index` of the guest table at `gfn`: every shadow page of
    that table drops the entry's spte, and a level-1 one rebuilds it from the new PTE (update_pte); an
    upper-level page written three times without a fault through it is zapped instead."""
    if not kvm.indirect_shadow_pages:
        return
    kvm.stat.mmu_pte_write += 1
    zapped: list[KvmMmuPage] = []
    remote_flush = local_flush = False
    pages = list(for_each_gfn_indirect_valid_sp(kvm, gfn))
    for sp in pages:
        if detect_write_flooding(sp):
            kvm_mmu_prepare_zap_page(kvm, sp)
            zapped.append(sp)
            kvm.stat.mmu_flooded += 1
            continue
        local_flush = True
        entry = sp.spt[index]
        mmu_page_zap_pte(kvm, sp, index)
        if new_gpte and sp.level == PT_PAGE_TABLE_LEVEL:
            paging_ops(kvm).update_pte(kvm, vcpu, sp, index, new_gpte)
        if need_remote_flush(entry, sp.spt[index]):
            remote_flush = True
    if kvm.tp.on:
        kvm.tp.emit(MmuPteWrite(gfn, index, old_gpte, new_gpte, len(pages), len(zapped)))
    if zapped:
        _commit(kvm, zapped)
    elif remote_flush:
        kvm_flush_remote_tlbs(kvm, "kvm_mmu_pte_write", under_mmu_lock=True)
    elif local_flush:
        vcpu.tlb.flush()


# --- huge pages back after logging (the rmap-based MMU) -----------------------------------------------------


def kvm_rmap_zap_collapsible_sptes(kvm: Kvm, slot: KvmMemorySlot) -> int:
    """Logging stopped: zap each 4K spte of a direct page whose range may be mapped huge again, so that
    the next fault there maps it huge (the shadow MMU's kvm_mmu_zap_collapsible_sptes, 4.1 and later).
    Sptes of indirect pages stay: the guest itself maps those pages small. Returns how many were zapped."""
    zapped = 0
    heads = slot.rmap[PT_PAGE_TABLE_LEVEL - 1]
    for key in sorted(heads):
        for sp, index in list(pte_list(heads.get(key))):
            gfn = slot.base_gfn + key
            if sp.direct and sp.level < kvm_mmu_max_mapping_level(kvm, slot, gfn):
                drop_spte(kvm, sp, index)
                zapped += 1
    if zapped:
        kvm_flush_remote_tlbs(kvm, "kvm_mmu_zap_collapsible_sptes", under_mmu_lock=True)
    if kvm.tp.on:
        kvm.tp.emit(ZapCollapsibleRmap(slot.id, zapped))
    return zapped


def vfn_of(gva: int) -> int:
    """The guest-virtual page number: what indexes the shadow tables, as the gfn indexes TDP's."""
    return gva >> 12


def gva_of_entry(sp: KvmMmuPage, index: int) -> int:
    """The first guest-virtual address entry `index` of a shadow page translates."""
    return sp.gva + (index << (12 + PT64_LEVEL_BITS * (sp.level - 1)))
