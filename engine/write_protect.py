"""Write protection in 3.14/3.16 mmu.c: one spte, one rmap head, a whole slot, or the pages a
GET_DIRTY_LOG returned. This is where "lazily drop large spte" changed what happens to a large spte.
"""

from __future__ import annotations

from itertools import compress, groupby
from operator import itemgetter

from engine.kvm import Kvm
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.memslot import KvmMemorySlot, gfn_to_index
from engine.mmu_spte import __drop_large_spte, mmu_spte_update, spte_update_needs_flush
from engine.rmap import pte_list
from engine.sched import cond_resched
from engine.shadow_page import KvmMmuPage, as_range, entries_at, kvm_mmu_page_get_gfn
from engine.spte import (
    PT_PAGE_TABLE_LEVEL,
    PT_WRITABLE_MASK,
    WRITABLE_BY_LOW_BYTE,
    is_large_pte,
    is_writable_pte,
    low_bytes,
    pages_per_hpage,
    spte_is_locklessly_modifiable,
)
from engine.trace import (
    ClearDirtyPtMasked,
    DropLargeSpte,
    RmapWriteProtect,
    SlotLeafClearDirty,
    SlotRemoveWriteAccess,
    SpteWriteProtect,
    traced,
)


def spte_write_protect(kvm: Kvm, sp: KvmMmuPage, index: int, pt_protect: bool) -> tuple[bool, bool]:
    """Remove write access from one spte; returns (need_flush, dropped).

    Before the patch a writable large spte is zapped instead (and the caller's rmap walk restarts,
    because the entry left the list). After it, the large spte stays present and read-only, keeping HW
    and MW: dirty logging only takes W away, so the fast path could give it back.
    """
    old = sp.spt[index]
    if not is_writable_pte(old) and not (pt_protect and spte_is_locklessly_modifiable(old, kvm.masks)):
        if kvm.tp.on:
            gfn = kvm_mmu_page_get_gfn(sp, index)
            kvm.tp.emit(SpteWriteProtect(sp.level, sp.gfn, index, gfn, old, old, "none", False))
        return False, False
    if is_large_pte(old) and kvm.policy.wp_large == "zap":
        tracing = kvm.tp.on
        if tracing:
            kvm.tp.enter(SpteWriteProtect.name)
            kvm.tp.enter(DropLargeSpte.name)
        dropped = __drop_large_spte(kvm, sp, index)
        if tracing:
            kvm.tp.exit()
            if dropped:
                gfn = kvm_mmu_page_get_gfn(sp, index)
                kvm.tp.emit(SpteWriteProtect(sp.level, sp.gfn, index, gfn, old, 0, "zap", True))
            kvm.tp.exit()
        if dropped:
            return True, True
    new = old & ~PT_WRITABLE_MASK
    if pt_protect:
        new &= ~kvm.masks.mmu_writable_mask
    flush = mmu_spte_update(kvm, sp, index, new)
    if kvm.tp.on:
        gfn = kvm_mmu_page_get_gfn(sp, index)
        kvm.tp.emit(SpteWriteProtect(sp.level, sp.gfn, index, gfn, old, new, "wrprotect", flush))
    return flush, False


@traced(RmapWriteProtect)
def __rmap_write_protect(kvm: Kvm, slot: KvmMemorySlot, level: int, key: int, pt_protect: bool) -> bool:
    """Write-protect every spte of one rmap head; returns whether a flush is needed."""
    heads = slot.rmap[level - 1]
    single = heads.get(key)
    if isinstance(single, tuple) and not kvm.tp.on:
        # One spte, as nearly every head of a direct MMU holds: nothing to restart after a drop.
        return spte_write_protect(kvm, single[0], single[1], pt_protect)[0]
    head = pte_list(single)
    flush = False
    seen = 0
    i = 0
    while i < len(head):
        sp, index = head[i]
        seen += 1
        need_flush, dropped = spte_write_protect(kvm, sp, index, pt_protect)
        flush |= need_flush
        if dropped:
            # 3.14 restarts from the head after a drop; read-only large sptes are never dropped.
            i = 0
            head = pte_list(heads.get(key))
        else:
            i += 1
    if kvm.tp.on:
        gfn = slot.base_gfn - (slot.base_gfn % pages_per_hpage(level)) + key * pages_per_hpage(level)
        kvm.tp.emit(RmapWriteProtect(slot.id, level, max(gfn, slot.base_gfn), seen, flush))
    return flush


@traced(SlotRemoveWriteAccess)
def kvm_mmu_slot_remove_write_access(
    kvm: Kvm, slot: KvmMemorySlot, start_level: int = PT_PAGE_TABLE_LEVEL
) -> None:
    """Logging was switched on: take W away from every spte of the slot, at every level from
    `start_level` up, then flush.

    The flush is unconditional. 3.14 issues it with mmu_lock held; 3.16 (198c74f4) after dropping it,
    which is safe only because write protection no longer makes sptes disappear. With PML the 4K leaves
    have just lost D instead (kvm_mmu_slot_leaf_clear_dirty) and only the huge leaves are protected, from
    2M up, so that a write to one faults and splits it; the one flush serves both passes.
    """
    walked = 0
    for level in range(start_level, PT_PAGE_TABLE_LEVEL + 3):
        heads = slot.rmap[level - 1]
        keys = sorted(heads)
        # The heads in key order, a run at a time: a head holding one spte is the tuple (sp, index), so
        # consecutive heads of one table group under that sp, and a long run of them is protected
        # together; a longer head (a list, grouped under its first spte) or a short run, head by head.
        # Protecting a head changes no other head, so the heads can be read ahead.
        start = 0
        for owner, group in groupby(map(heads.__getitem__, keys), key=itemgetter(0)):
            cond_resched()
            run = list(group)
            run_keys = keys[start : start + len(run)]
            start += len(run)
            if isinstance(owner, KvmMmuPage) and len(run) >= _BULK_RUN:
                _rmap_write_protect_run(kvm, slot, owner, run_keys, as_range(list(map(itemgetter(1), run))))
                walked += len(run_keys)
                continue
            for key in run_keys:
                if key in heads:
                    __rmap_write_protect(kvm, slot, level, key, pt_protect=False)
                    walked += 1
    if kvm.tp.on:
        kvm.tp.emit(SlotRemoveWriteAccess(slot.id, walked))
    kvm_flush_remote_tlbs(
        kvm, "kvm_mmu_slot_remove_write_access", under_mmu_lock=not kvm.policy.flush_after_unlock
    )


# Runs of single-spte heads at least this long are protected in one store of their table; shorter ones
# (a few faulted pages of a table) cost less head by head.
_BULK_RUN = 16


def _rmap_write_protect_run(
    kvm: Kvm, slot: KvmMemorySlot, sp: KvmMmuPage, keys: list[int], indexes: range | list[int]
) -> None:
    """__rmap_write_protect (without pt_protect) of the rmap heads `keys` of `sp`'s level, in order, each
    holding the one spte at (sp, indexes[k]): every writable one loses W, in one store of the table.

    A writable large spte that 3.14 would zap instead leaves its rmap, and an spte in two heads (a broken
    rmap) is protected once and then found read-only: such a run takes the heads one at a time."""
    level = sp.level
    olds = entries_at(sp, indexes)
    zapped = kvm.policy.wp_large == "zap" and any(is_writable_pte(old) and is_large_pte(old) for old in olds)
    if zapped or (isinstance(indexes, list) and len(set(indexes)) != len(indexes)):
        for key in keys:
            if key in slot.rmap[level - 1]:
                __rmap_write_protect(kvm, slot, level, key, pt_protect=False)
        return
    writable = low_bytes(olds).translate(WRITABLE_BY_LOW_BYTE)
    if writable.count(1) == len(olds):  # as after a split of a writable huge page
        kvm.clear_spte_bits(sp, indexes, PT_WRITABLE_MASK)
    else:
        kvm.clear_spte_bits(sp, list(compress(indexes, writable)), PT_WRITABLE_MASK)
    if kvm.tp.on:
        span = pages_per_hpage(level)
        for key, index, old in zip(keys, indexes, olds, strict=True):
            kvm.tp.enter(RmapWriteProtect.name)
            gfn = kvm_mmu_page_get_gfn(sp, index)
            if is_writable_pte(old):
                new = old & ~PT_WRITABLE_MASK
                flush = spte_update_needs_flush(kvm, old, new)
                kvm.tp.emit(SpteWriteProtect(level, sp.gfn, index, gfn, old, new, "wrprotect", flush))
            else:
                flush = False
                kvm.tp.emit(SpteWriteProtect(level, sp.gfn, index, gfn, old, old, "none", False))
            head_gfn = slot.base_gfn - (slot.base_gfn % span) + key * span
            kvm.tp.emit(RmapWriteProtect(slot.id, level, max(head_gfn, slot.base_gfn), 1, flush))
            kvm.tp.exit()


def kvm_mmu_write_protect_pt_masked(kvm: Kvm, slot: KvmMemorySlot, gfn_offset: int, mask: int) -> None:
    """Re-protect the pages GET_DIRTY_LOG just reported. Only level-1 rmaps are looked at: the caller
    assumes no large mapping exists while logging is on, which is what caf6900f broke."""
    while mask:
        bit = (mask & -mask).bit_length() - 1
        __rmap_write_protect(kvm, slot, PT_PAGE_TABLE_LEVEL, gfn_offset + bit, pt_protect=False)
        mask &= mask - 1


def kvm_mmu_slot_gfn_write_protect(kvm: Kvm, slot: KvmMemorySlot, gfn: int, min_level: int) -> bool:
    """Write-protect whatever maps `gfn` at `min_level` and every larger level, through those rmaps;
    returns whether a flush is needed (the callers flush once, later).

    This is the write protection of page tracking, not of dirty logging: it clears MMU-writable too
    (rmap_write_protect with pt_protect, and the TDP MMU's write_protect_gfn), so the fast path will not
    make these sptes writable again; the next write to one takes the slow path."""
    flush = False
    for level in range(min_level, PT_PAGE_TABLE_LEVEL + 3):
        key = gfn_to_index(gfn, slot.base_gfn, level)
        if key in slot.rmap[level - 1]:
            flush |= __rmap_write_protect(kvm, slot, level, key, pt_protect=True)
    return flush


# --- Intel PML: D instead of W (later kernels' mmu/mmu.c) ------------------------------------------------


def spte_clear_dirty(kvm: Kvm, sp: KvmMmuPage, index: int) -> bool:
    """Clear D on one spte; returns whether it was set. W stays: the next store through it makes the CPU
    set D again and log the page, so a TLB entry that cached D must go (the callers flush)."""
    old = sp.spt[index]
    dirty = kvm.masks.dirty_mask
    if not old & dirty:
        return False
    mmu_spte_update(kvm, sp, index, old & ~dirty)
    return True


def __rmap_clear_dirty(kvm: Kvm, slot: KvmMemorySlot, key: int, level: int = PT_PAGE_TABLE_LEVEL) -> int:
    """Clear D on every spte of one rmap head (level 1 unless told); returns how many had it."""
    head = pte_list(slot.rmap[level - 1].get(key))
    return sum(spte_clear_dirty(kvm, sp, index) for sp, index in head)


def kvm_mmu_slot_leaf_clear_dirty(kvm: Kvm, slot: KvmMemorySlot) -> int:
    """Logging was switched on with PML: clear D on the leaves of the slot (the huge leaves are
    write-protected next, by the caller); returns how many had D. The caller flushes.

    The rmap-based MMU clears D on 4K leaves only (walk_slot_rmaps_4k); the 6.x TDP MMU
    (clear_dirty_gfn_range) on every present leaf, huge ones included."""
    levels = range(PT_PAGE_TABLE_LEVEL, PT_PAGE_TABLE_LEVEL + (3 if kvm.era6 else 1))
    cleared = 0
    for level in levels:
        cond_resched()
        heads = slot.rmap[level - 1]
        cleared += sum(__rmap_clear_dirty(kvm, slot, key, level) for key in sorted(heads))
    if kvm.tp.on:
        kvm.tp.emit(SlotLeafClearDirty(slot.id, cleared))
    return cleared


def kvm_mmu_clear_dirty_pt_masked(kvm: Kvm, slot: KvmMemorySlot, gfn_offset: int, mask: int) -> None:
    """Re-arm the pages of `mask` under PML: clear D on their 4K sptes (only level-1 rmaps, as the
    write-protecting twin), so the next store to each is logged again. The caller flushes."""
    cleared = 0
    bits = mask
    while bits:
        bit = (bits & -bits).bit_length() - 1
        cleared += __rmap_clear_dirty(kvm, slot, gfn_offset + bit)
        bits &= bits - 1
    if kvm.tp.on:
        kvm.tp.emit(ClearDirtyPtMasked(slot.id, gfn_offset, f"{mask:#x}", cleared))
