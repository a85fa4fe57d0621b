"""Zapping every shadow page, as 3.14/3.16's kvm_mmu_zap_all does on a memslot deletion or move.
"""

from __future__ import annotations

from engine.kvm import Kvm
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.mmu_spte import drop_parent_pte, drop_spte
from engine.shadow_page import KvmMmuPage
from engine.spte import (
    is_large_pte,
    is_last_spte,
    is_shadow_present_pte,
)
from engine.trace import (
    MmuLoad,
    PrepareZapPage,
    ZapAll,
)


def kvm_mmu_zap_all(kvm: Kvm) -> None:
    """Zap every shadow page, newest first, as a memslot deletion or move does; then reload the root."""
    pages = sorted(kvm.active_mmu_pages.values(), key=lambda sp: sp.serial, reverse=True)
    for sp in pages:
        kvm_mmu_prepare_zap_page(kvm, sp)
    kvm_flush_remote_tlbs(kvm, "kvm_mmu_commit_zap_page", under_mmu_lock=True)
    for sp in pages:
        kvm.free_mmu_page(sp)
    if kvm.tp.on:
        kvm.tp.emit(ZapAll(len(pages)))
    kvm.root = kvm.alloc_root()
    if kvm.tp.on:
        kvm.tp.emit(MmuLoad(kvm.root.gfn, kvm.root.level))


def kvm_mmu_prepare_zap_page(kvm: Kvm, sp: KvmMmuPage) -> None:
    kvm.stat.mmu_shadow_zapped += 1
    if kvm.tp.on:
        kvm.tp.emit(PrepareZapPage(sp.level, sp.gfn))
    # kvm_mmu_page_unlink_children
    for index, spte in enumerate(sp.spt):
        if not is_shadow_present_pte(spte):
            continue
        if is_last_spte(spte, sp.level):
            if is_large_pte(spte):
                kvm.stat.lpages -= 1
            drop_spte(kvm, sp, index)
        else:
            drop_parent_pte(kvm, kvm.child_sp(spte), sp, index)
    # kvm_mmu_unlink_parents
    for parent, index in list(sp.parent_ptes):
        drop_parent_pte(kvm, sp, parent, index)
    sp.invalid = True
