"""Which gfns hold shadowed guest page tables, and what a writable spte to one of them needs: mmu.c's
`for_each_gfn_indirect_valid_sp`, `mmu_need_write_protect` and the unsync bookkeeping
(`kvm_unsync_pages`, `kvm_mmu_mark_parents_unsync`).

Apart from engine.shadow_mmu because `set_spte` (engine.mmu) asks `mmu_need_write_protect` for every
writable leaf it builds. Under TDP no page is indirect, so the answer is always "no" and costs one test.
"""

from __future__ import annotations

from collections.abc import Iterator

from engine.kvm import Kvm
from engine.memslot import gfn_to_index
from engine.shadow_page import KvmMmuPage
from engine.spte import KVM_NR_PAGE_SIZES, PT_DIRECTORY_LEVEL, PT_PAGE_TABLE_LEVEL
from engine.trace_shadow import AccountShadowed, UnsyncPage


def account_shadowed(kvm: Kvm, gfn: int, delta: int = 1) -> None:
    """account_shadowed (delta 1) / unaccount_shadowed (-1): a guest table at `gfn` is (no longer)
    shadowed, so its 2M and 1G ranges may not (again may) be mapped by a huge spte: mapping_level asks
    these counts, and set_spte refuses a writable huge spte over a counted range."""
    slot = kvm.gfn_to_memslot(gfn)
    if slot is not None:
        for level in range(PT_DIRECTORY_LEVEL, PT_PAGE_TABLE_LEVEL + KVM_NR_PAGE_SIZES):
            counts = slot.lpage_write_count[level - 2]
            counts[gfn_to_index(gfn, slot.base_gfn, level)] += delta
    kvm.indirect_shadow_pages += delta
    count = kvm.shadowed_gfns.get(gfn, 0) + delta
    if count:
        kvm.shadowed_gfns[gfn] = count
    else:
        kvm.shadowed_gfns.pop(gfn, None)
    if kvm.tp.on:
        count = slot.has_wrprotected_page(gfn, PT_DIRECTORY_LEVEL) if slot is not None else 0
        kvm.tp.emit(AccountShadowed(gfn, delta, count))


def for_each_gfn_indirect_valid_sp(kvm: Kvm, gfn: int) -> Iterator[KvmMmuPage]:
    """The live indirect shadow pages of `gfn` at every level, in hash order: the guest tables at `gfn`
    KVM shadows."""
    if gfn not in kvm.shadowed_gfns:
        return
    for level in range(PT_PAGE_TABLE_LEVEL, PT_PAGE_TABLE_LEVEL + 4):
        for sp in kvm.mmu_page_hash.get((gfn, level), ()):
            if not sp.direct and not sp.invalid:
                yield sp


def kvm_mmu_mark_parents_unsync(kvm: Kvm, sp: KvmMmuPage) -> None:
    """mark_unsync on every parent entry of `sp`, up the tree until a parent already had unsync
    children: what mmu_sync_children follows down from a root."""
    for parent, index in sp.parent_ptes:
        children = parent.unsync_children
        if children is None:
            children = parent.unsync_children = set()
        if index in children:
            continue
        children.add(index)
        if len(children) == 1:
            kvm_mmu_mark_parents_unsync(kvm, parent)


def kvm_unsync_page(kvm: Kvm, sp: KvmMmuPage) -> None:
    """__kvm_unsync_page: the page stops being write-protected; its guest table may now change unseen."""
    sp.unsync = True
    kvm.stat.mmu_unsync += 1
    if kvm.tp.on:
        kvm.tp.emit(UnsyncPage(sp.level, sp.gfn))
    kvm_mmu_mark_parents_unsync(kvm, sp)


def mmu_need_write_protect(kvm: Kvm, gfn: int, can_unsync: bool, prefetch: bool) -> bool:
    """Whether a writable spte for `gfn` must be built read-only because a guest table at `gfn` is
    shadowed: always when unsyncing is not allowed (a sync) or the table is above level 1; else its
    level-1 pages are unsynced and the spte may be writable.

    6.x (mmu_try_to_unsync_pages) does not unsync a page for a prefetched spte: it stays read-only."""
    if gfn not in kvm.shadowed_gfns:
        return False
    pages = list(for_each_gfn_indirect_valid_sp(kvm, gfn))
    if not pages:
        return False
    for sp in pages:
        if not can_unsync or sp.level != PT_PAGE_TABLE_LEVEL:
            return True
    if prefetch and kvm.era6 and any(not sp.unsync for sp in pages):
        return True
    for sp in pages:
        if not sp.unsync:
            kvm_unsync_page(kvm, sp)
    return False


def kvm_unlink_unsync_page(kvm: Kvm, sp: KvmMmuPage) -> None:
    """The page is synced (or zapped): it is write-protected again."""
    sp.unsync = False
    kvm.stat.mmu_unsync -= 1
