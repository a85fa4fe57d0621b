"""Dirty logging as userspace drives it: the LOG_DIRTY_PAGES flag, KVM_GET_DIRTY_LOG and KVM_CLEAR_DIRTY_LOG.

Mirrors 3.14/3.16 kvm_main.c `__kvm_set_memory_region` (flags-only changes) with x86.c
`kvm_arch_commit_memory_region`, and x86.c `kvm_vm_ioctl_get_dirty_log`; for the later modes
(`policy.dirty_log_mode`), kvm_main.c `kvm_get_dirty_log_protect` / `kvm_clear_dirty_log_protect` and x86
mmu.c `kvm_arch_mmu_enable_log_dirty_pt_masked`.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.kvm import Kvm
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.memslot import BITS_PER_LONG, KvmMemorySlot
from engine.pml import kvm_arch_sync_dirty_log, kvm_mmu_update_cpu_dirty_logging
from engine.shadow_mmu import kvm_rmap_zap_collapsible_sptes
from engine.spte import PT_DIRECTORY_LEVEL, PT_PAGE_TABLE_LEVEL, pages_per_hpage
from engine.tdp_mmu import (
    kvm_mmu_slot_try_split_huge_pages,
    recover_huge_pages_on_disable,
    split_huge_pages_in_range,
)
from engine.trace import (
    ClearDirtyLog,
    ClearDirtyLogProtect,
    EnableLogDirtyPtMasked,
    GetDirtyLog,
    IoctlError,
    SetMemoryRegion,
    WriteProtectPtMasked,
    traced,
)
from engine.write_protect import (
    kvm_mmu_clear_dirty_pt_masked,
    kvm_mmu_slot_gfn_write_protect,
    kvm_mmu_slot_leaf_clear_dirty,
    kvm_mmu_slot_remove_write_access,
    kvm_mmu_write_protect_pt_masked,
)

HPAGE_2M_PAGES = pages_per_hpage(PT_DIRECTORY_LEVEL)


@traced(SetMemoryRegion)
def kvm_set_dirty_logging(kvm: Kvm, slot: KvmMemorySlot, enable: bool) -> None:
    """Set or clear KVM_MEM_LOG_DIRTY_PAGES on a slot (a KVM_MR_FLAGS_ONLY change).

    Order matters and is the kernel's: the bitmap exists and the new memslots are installed before the
    sptes are write-protected, so a fault racing with the protection already sees the bitmap and maps
    4K. Setting a flag that is already set changes nothing, as in the kernel. Clearing it only frees the
    bitmap: 3.14/3.16 leave every spte as it is.

    Later kernels (kvm_mmu_slot_apply_flags) split every huge page of the slot before write-protecting it
    (`eager_split`), and bring the huge pages back once logging stops (`recover_on_disable`: by zapping
    until 6.12, in place since 6.13), both after the new memslots are installed.

    With PML (`pml`, EPT A/D bits on) every vCPU logs stores while any slot is logged; enabling clears D
    on the slot's 4K leaves instead of W and write-protects only the huge ones. Disabling stops the
    logging and leaves the D bits as they are.
    """
    if enable == (slot.dirty_bitmap is not None):
        if kvm.tp.on:
            kvm.tp.emit(SetMemoryRegion(slot.id, enable, "none"))
        return
    if kvm.tp.on:
        kvm.tp.emit(SetMemoryRegion(slot.id, enable, "flags_only"))
    if not enable:
        slot.dirty_bitmap = None
        kvm_mmu_update_cpu_dirty_logging(kvm, slot, False)
        if kvm.policy.recover_on_disable:
            if kvm.shadow:  # the rmap-based MMU zaps, in every generation that recovers
                kvm_rmap_zap_collapsible_sptes(kvm, slot)
            else:
                recover_huge_pages_on_disable(kvm, slot)
        return
    slot.create_dirty_bitmap()
    kvm.log.logging_enabled.append(slot.id)
    kvm_mmu_update_cpu_dirty_logging(kvm, slot, True)
    if kvm.policy.dirty_log_mode == "initially_set":
        # KVM_DIRTY_LOG_INITIALLY_SET: every page starts dirty, so nothing can be missed yet and no spte
        # is touched; each KVM_CLEAR_DIRTY_LOG protects the range it clears.
        slot.set_all_dirty()
        return
    if kvm.policy.eager_split and not kvm.shadow:  # the TDP MMU's: the shadow MMU never splits eagerly
        kvm_mmu_slot_try_split_huge_pages(kvm, slot)
    if kvm.cpu_dirty_log_size:
        kvm_mmu_slot_leaf_clear_dirty(kvm, slot)
        kvm_mmu_slot_remove_write_access(kvm, slot, PT_DIRECTORY_LEVEL)
    else:
        kvm_mmu_slot_remove_write_access(kvm, slot, PT_PAGE_TABLE_LEVEL)


def ioctl_error(kvm: Kvm, ioctl: str, errno: str, reason: str) -> None:
    """An ioctl the kernel refuses under this VM's dirty-log mode: the step records the failure and goes
    on, as userspace would, so that any scenario can be replayed under any mode."""
    kvm.log.ioctl_error = f"{ioctl}: {errno}"
    if kvm.tp.on:
        kvm.tp.emit(IoctlError(ioctl, errno, reason))


@traced(GetDirtyLog)
def kvm_vm_ioctl_get_dirty_log(kvm: Kvm, slot: KvmMemorySlot, split: bool = False) -> list[int] | None:
    """Return and clear the slot's dirty bits, re-protecting each reported page, one long at a time.

    The flush is conditioned on "some bit was set", not on whether any spte changed. 3.14 issues it under
    mmu_lock; 3.16 after unlocking, which is safe because the caller copies the pages only after the
    ioctl returns, i.e. after the flush.

    With manual protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) the ioctl only copies the bitmap: clearing
    and re-protecting wait for KVM_CLEAR_DIRTY_LOG, so userspace can re-arm a chunk right before it copies
    that chunk. With the dirty ring there is no bitmap to copy: -ENXIO, and None.

    With PML every vCPU's log is flushed into the bitmap first, and the reported pages lose D, not W.
    """
    mode = kvm.policy.dirty_log_mode
    if mode == "ring":
        ioctl_error(kvm, "KVM_GET_DIRTY_LOG", "ENXIO", "the VM logs dirty pages in rings, not bitmaps")
        return None
    bitmap = slot.dirty_bitmap
    if bitmap is None:
        raise AssertionError(f"GET_DIRTY_LOG on slot {slot.id}, which is not logged")
    kvm_arch_sync_dirty_log(kvm)
    if mode != "bitmap":
        copied = slot.dirty_gfns()
        kvm.log.harvested.extend(copied)
        kvm.log.harvested_slots.append(slot.id)
        if kvm.tp.on:
            kvm.tp.emit(GetDirtyLog(slot.id, tuple(copied), False))
        return copied
    gfns: list[int] = []
    for word, mask in list(slot.dirty_words()):
        bitmap[word * 8 : word * 8 + 8] = bytes(8)  # the kernel's xchg(word, 0)
        gfns.extend(slot.gfns_of_word(word, mask))
        first = word * BITS_PER_LONG
        if kvm.cpu_dirty_log_size:
            kvm_mmu_clear_dirty_pt_masked(kvm, slot, first, mask)
            continue
        if kvm.tp.on:  # the caller names the call, and the rmap walks it makes go under it
            kvm.tp.enter(WriteProtectPtMasked.name)
            kvm.tp.emit(WriteProtectPtMasked(slot.id, first, f"{mask:#x}"))
            kvm_mmu_write_protect_pt_masked(kvm, slot, first, mask)
            kvm.tp.exit()
        else:
            kvm_mmu_write_protect_pt_masked(kvm, slot, first, mask)
    kvm.log.harvested.extend(gfns)
    kvm.log.harvested_slots.append(slot.id)
    kvm.log.reprotected.extend(gfns)
    if kvm.tp.on:
        kvm.tp.emit(GetDirtyLog(slot.id, tuple(gfns), bool(gfns)))
    deferred = bool(gfns) and split and kvm.policy.flush_after_unlock
    if split:
        kvm.split_gets[slot.id] = (gfns, deferred)  # the rest is get_dirty_log_end's
    if gfns and not deferred:
        kvm_flush_remote_tlbs(
            kvm, "kvm_vm_ioctl_get_dirty_log", under_mmu_lock=not kvm.policy.flush_after_unlock
        )
    return gfns


def kvm_get_dirty_log_end(kvm: Kvm, slot: KvmMemorySlot) -> None:
    """The second half of a split GET_DIRTY_LOG: mmu_lock is dropped, then the flush 198c74f4 moved
    there (if the first half wrote anything and did not flush under the lock), then the ioctl returns.

    Stores that reached the reported pages meanwhile (through a TLB entry the flush had yet to drop)
    are not lost: userspace copies those pages only after the ioctl returns. The step hands them over
    as reported, which is what the copy makes them."""
    gfns, deferred = kvm.split_gets.pop(slot.id, ([], False))
    if deferred:
        kvm_flush_remote_tlbs(kvm, "kvm_vm_ioctl_get_dirty_log", under_mmu_lock=False)
    kvm.log.harvested.extend(gfns)
    kvm.log.harvested_slots.append(slot.id)


@traced(ClearDirtyLog)
def kvm_vm_ioctl_clear_dirty_log(
    kvm: Kvm, slot: KvmMemorySlot, first: int, num: int, user_mask: Mapping[int, int] | None = None
) -> bool:
    """KVM_CLEAR_DIRTY_LOG over pages [first, first + num) of the slot; False when the kernel refuses.

    `user_mask` is userspace's bitmap by long index (None: every bit of the range set). The kernel does
    not ask for manual protection here: under plain GET_DIRTY_LOG a CLEAR re-protects what was written
    since. The range rules (-EINVAL) are the scenario's to check before anything runs.
    """
    if kvm.tp.on:
        kvm.tp.emit(ClearDirtyLog(slot.id, first, num))
    if kvm.policy.dirty_log_mode == "ring":
        ioctl_error(kvm, "KVM_CLEAR_DIRTY_LOG", "ENXIO", "the VM logs dirty pages in rings, not bitmaps")
        return False
    if slot.dirty_bitmap is None:
        ioctl_error(kvm, "KVM_CLEAR_DIRTY_LOG", "ENOENT", f"slot {slot.id} is not dirty-logged")
        return False
    if (
        first % BITS_PER_LONG
        or first + num > slot.npages
        or (num % BITS_PER_LONG and first + num != slot.npages)
    ):
        raise AssertionError(f"CLEAR_DIRTY_LOG of pages {first:#x}+{num} on slot {slot.id}: bad range")
    kvm_arch_sync_dirty_log(kvm)
    kvm_clear_dirty_log_protect(kvm, slot, first, num, user_mask)
    return True


@traced(ClearDirtyLogProtect)
def kvm_clear_dirty_log_protect(
    kvm: Kvm, slot: KvmMemorySlot, first: int, num: int, user_mask: Mapping[int, int] | None
) -> None:
    """Per long of the range: clear the requested bits atomically and re-protect only those that were
    set (a page whose bit was already clear was protected when it was cleared, and has not been written
    through a fault since). Flush once at the end if any bit was cleared, after mmu_lock is dropped."""
    cleared: list[int] = []
    end = first + num
    for offset in range(first, end, BITS_PER_LONG):
        word = offset // BITS_PER_LONG
        width = min(BITS_PER_LONG, end - offset)
        mask = (1 << width) - 1 if user_mask is None else user_mask.get(word, 0)
        if not mask:
            continue
        mask &= slot.fetch_andnot_word(word, mask)
        if mask:
            cleared.extend(slot.gfns_of_word(word, mask))
            kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, offset, mask)
    kvm.log.reprotected.extend(cleared)
    kvm.log.discarded.extend(cleared)
    if kvm.tp.on:
        kvm.tp.emit(ClearDirtyLogProtect(slot.id, tuple(cleared), bool(cleared)))
    if cleared:
        kvm_flush_remote_tlbs(kvm, "kvm_clear_dirty_log_protect", under_mmu_lock=False)


@traced(EnableLogDirtyPtMasked)
def kvm_arch_mmu_enable_log_dirty_pt_masked(
    kvm: Kvm, slot: KvmMemorySlot, gfn_offset: int, mask: int
) -> None:
    """Re-arm dirty logging for the pages of `mask` (bit i: page gfn_offset + i of the slot).

    Under INITIALLY_SET nothing was protected when logging started, so huge pages may still map these
    pages writable: first split (with eager splitting) and write-protect the huge pages holding the first
    and the last page of the mask (a long spans at most two 2M pages), so that a write there faults and
    is logged. Then the 4K sptes, through the level-1 rmaps as GET_DIRTY_LOG does: W is cleared, or with
    PML the D bit (the huge pages are write-protected either way).
    """
    huge_first = kvm.policy.dirty_log_mode == "initially_set"
    if kvm.tp.on:
        kvm.tp.emit(EnableLogDirtyPtMasked(slot.id, gfn_offset, f"{mask:#x}", huge_first))
    if huge_first:
        start = slot.base_gfn + gfn_offset + (mask & -mask).bit_length() - 1
        end = slot.base_gfn + gfn_offset + mask.bit_length() - 1
        if kvm.policy.eager_split and not kvm.shadow:
            split_huge_pages_in_range(kvm, slot, start, end + 1)
        kvm_mmu_slot_gfn_write_protect(kvm, slot, start, PT_DIRECTORY_LEVEL)
        # The kernel compares both ends rounded up to 2M: a range ending inside the next 2M page (or
        # starting unaligned) protects the end's huge pages too.
        if -(-start // HPAGE_2M_PAGES) != -(-end // HPAGE_2M_PAGES):
            kvm_mmu_slot_gfn_write_protect(kvm, slot, end, PT_DIRECTORY_LEVEL)
    if kvm.cpu_dirty_log_size:
        kvm_mmu_clear_dirty_pt_masked(kvm, slot, gfn_offset, mask)
    else:
        kvm_mmu_write_protect_pt_masked(kvm, slot, gfn_offset, mask)
