"""Dirty logging as userspace drives it: the LOG_DIRTY_PAGES flag and KVM_GET_DIRTY_LOG.

Mirrors 3.14/3.16 kvm_main.c `__kvm_set_memory_region` (flags-only changes) with x86.c
`kvm_arch_commit_memory_region`, and x86.c `kvm_vm_ioctl_get_dirty_log`.
"""

from __future__ import annotations

from engine.kvm import Kvm
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.memslot import BITS_PER_LONG, KvmMemorySlot
from engine.trace import GetDirtyLog, SetMemoryRegion, WriteProtectPtMasked
from engine.write_protect import kvm_mmu_slot_remove_write_access, kvm_mmu_write_protect_pt_masked


def kvm_set_dirty_logging(kvm: Kvm, slot: KvmMemorySlot, enable: bool) -> None:
    """Set or clear KVM_MEM_LOG_DIRTY_PAGES on a slot (a KVM_MR_FLAGS_ONLY change).

    Order matters and is the kernel's: the bitmap exists and the new memslots are installed before the
    sptes are write-protected, so a fault racing with the protection already sees the bitmap and maps
    4K. Setting a flag that is already set changes nothing, as in the kernel. Clearing it only frees the
    bitmap: 3.14/3.16 leave every spte as it is.
    """
    if enable == (slot.dirty_bitmap is not None):
        if kvm.tp.on:
            kvm.tp.emit(SetMemoryRegion(slot.id, enable, "none"))
        return
    if kvm.tp.on:
        kvm.tp.emit(SetMemoryRegion(slot.id, enable, "flags_only"))
    if not enable:
        slot.dirty_bitmap = None
        return
    slot.create_dirty_bitmap()
    kvm.log.logging_enabled.append(slot.id)
    kvm_mmu_slot_remove_write_access(kvm, slot)


def kvm_vm_ioctl_get_dirty_log(kvm: Kvm, slot: KvmMemorySlot) -> list[int]:
    """Return and clear the slot's dirty bits, re-protecting each reported page, one long at a time.

    The flush is conditioned on "some bit was set", not on whether any spte changed. 3.14 issues it under
    mmu_lock; 3.16 after unlocking, which is safe because the caller copies the pages only after the
    ioctl returns, i.e. after the flush.
    """
    bitmap = slot.dirty_bitmap
    if bitmap is None:
        raise AssertionError(f"GET_DIRTY_LOG on slot {slot.id}, which is not logged")
    gfns: list[int] = []
    for word, mask in list(slot.dirty_words()):
        bitmap[word * 8 : word * 8 + 8] = bytes(8)  # the kernel's xchg(word, 0)
        gfns.extend(slot.gfns_of_word(word, mask))
        first = word * BITS_PER_LONG
        if kvm.tp.on:
            kvm.tp.emit(WriteProtectPtMasked(slot.id, first, f"{mask:#x}"))
        kvm_mmu_write_protect_pt_masked(kvm, slot, first, mask)
    kvm.log.harvested.extend(gfns)
    kvm.log.harvested_slots.append(slot.id)
    if kvm.tp.on:
        kvm.tp.emit(GetDirtyLog(slot.id, tuple(gfns), bool(gfns)))
    if gfns:
        kvm_flush_remote_tlbs(
            kvm, "kvm_vm_ioctl_get_dirty_log", under_mmu_lock=not kvm.policy.flush_after_unlock
        )
    return gfns
