"""The spte write primitives of 3.14/3.16 mmu.c: install, update, clear and drop one spte.

Every caller that changes an spte goes through these (and they through `Kvm.write_spte`). Where the flush
decision of an update differs between 3.14 and 3.16, `mmu_spte_update` reads the policy's `flush_rule`.
"""

from __future__ import annotations

from engine.kvm import Kvm
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.rmap import rmap_remove, rmap_remove_sptes
from engine.shadow_page import KvmMmuPage, kvm_mmu_page_get_gfn
from engine.spte import (
    PAGE_SHIFT,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    is_large_pte,
    is_shadow_present_pte,
    is_writable_pte,
)
from engine.trace import (
    DropLargeSpte,
    DropParentPte,
    DropSpte,
    traced,
)


def make_nonleaf_spte(kvm: Kvm, child: KvmMmuPage) -> int:
    """A pointer to `child`: readable, writable, executable and accessed, so that only leaves decide, with
    the bits the layout gives every present spte (link_shadow_page in 3.x; 6.x make_nonleaf_spte, which
    the TDP MMU also uses to link the table a split fills)."""
    masks = kvm.masks
    return (
        (child.pfn << PAGE_SHIFT)
        | PT_PRESENT_MASK
        | PT_WRITABLE_MASK
        | masks.present_mask
        | masks.x_mask
        | masks.user_mask
        | masks.accessed_mask
    )


def mmu_spte_set(kvm: Kvm, sp: KvmMmuPage, index: int, new: int) -> None:
    """Install an spte where none was present, or (the TDP MMU linking a split table) a pointer over a huge
    leaf its caller has already taken out of the rmap and the large-page count."""
    kvm.write_spte(sp, index, new)


def mmu_spte_update(kvm: Kvm, sp: KvmMmuPage, index: int, new: int) -> bool:
    """Change a present spte's permissions; returns whether TLBs may now hold more than the spte allows.

    3.14 asks "was it writable?". 3.16 asks "could the fast path have made it writable behind our back?",
    because with the flush moved out of mmu_lock a W bit may already be gone while a TLB still has it.
    """
    old = kvm.write_spte(sp, index, new)  # mmu_spte_set when nothing was present
    return spte_update_needs_flush(kvm, old, new)


def spte_update_needs_flush(kvm: Kvm, old: int, new: int) -> bool:
    """mmu_spte_update's answer for `old` replaced by `new`: whether TLBs may now hold more than it allows."""
    if not is_shadow_present_pte(old) or is_writable_pte(new):
        return False
    if kvm.policy.flush_rule == "old_w":
        return is_writable_pte(old)
    lockless = kvm.masks.lockless_mask
    return old & lockless == lockless


def _pfn_dirty(kvm: Kvm, old: int) -> bool:
    """Whether clearing `old` leaves the host page to be marked dirty: D was set, or there are no A/D."""
    return bool(old & kvm.masks.dirty_mask) or not kvm.masks.dirty_mask


def mmu_spte_clear_track_bits(kvm: Kvm, sp: KvmMmuPage, index: int) -> tuple[int, bool]:
    """Clear an spte; returns it and whether the host page must be marked dirty (D set, or no A/D)."""
    old = kvm.write_spte(sp, index, kvm.masks.nonpresent)
    return old, _pfn_dirty(kvm, old)


def drop_spte(kvm: Kvm, sp: KvmMmuPage, index: int) -> int:
    old, pfn_dirty = mmu_spte_clear_track_bits(kvm, sp, index)
    if is_shadow_present_pte(old):
        rmap_remove(kvm, sp, index)
    if kvm.tp.on:
        kvm.tp.emit(DropSpte(sp.level, sp.gfn, index, kvm_mmu_page_get_gfn(sp, index), old, pfn_dirty))
    return old


def drop_sptes(kvm: Kvm, sp: KvmMmuPage, indexes: range | list[int]) -> None:
    """drop_spte for each of the present leaves at `indexes` of `sp`, in order: cleared in one store of
    the table and taken out of their rmaps together, as zapping a whole 4K table does."""
    olds = kvm.write_sptes(sp, indexes, [kvm.masks.nonpresent] * len(indexes))
    rmap_remove_sptes(kvm, sp, indexes)
    if kvm.tp.on:
        for index, old in zip(indexes, olds, strict=True):
            gfn = kvm_mmu_page_get_gfn(sp, index)
            kvm.tp.emit(DropSpte(sp.level, sp.gfn, index, gfn, old, _pfn_dirty(kvm, old)))


def __drop_large_spte(kvm: Kvm, sp: KvmMmuPage, index: int) -> bool:
    old = sp.spt[index]
    if not is_large_pte(old):
        return False
    drop_spte(kvm, sp, index)
    kvm.stat.lpages -= 1
    if kvm.tp.on:
        kvm.tp.emit(DropLargeSpte(sp.level, sp.gfn, index, kvm_mmu_page_get_gfn(sp, index), old))
    return True


@traced(DropLargeSpte)
def drop_large_spte(kvm: Kvm, sp: KvmMmuPage, index: int) -> None:
    """Zap a large spte met on the way down (404381c5): a table cannot be linked under a leaf."""
    if __drop_large_spte(kvm, sp, index):
        kvm_flush_remote_tlbs(kvm, "drop_large_spte", under_mmu_lock=True)


def drop_parent_pte(kvm: Kvm, child: KvmMmuPage, sp: KvmMmuPage, index: int) -> None:
    """Unlink `child` from the entry (sp, index) that points at it (mmu_spte_clear_no_track)."""
    child.parent_ptes.remove((sp, index))
    kvm.write_spte(sp, index, kvm.masks.nonpresent)
    if kvm.tp.on:
        kvm.tp.emit(DropParentPte(sp.level, sp.gfn, index, child.gfn))
