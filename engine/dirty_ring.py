"""The dirty ring (KVM_CAP_DIRTY_LOG_RING, v5.11): harvesting the per-vCPU rings and KVM_RESET_DIRTY_RINGS.

Mirrors virt/kvm/dirty_ring.c `kvm_dirty_ring_reset` and kvm_main.c `kvm_vm_ioctl_reset_dirty_pages`; the
push is `engine.kvm_main.kvm_dirty_ring_push`, called by `mark_page_dirty`. Userspace's side (reading the
entries a vCPU published, in order, and flagging them collected) is `harvest_and_reset`, the op of a
`reset_dirty_ring` step and of each migration round in ring mode.
"""

from __future__ import annotations

from engine.dirty_log import ioctl_error, kvm_arch_mmu_enable_log_dirty_pt_masked
from engine.kvm import Kvm, Vcpu
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.memslot import BITS_PER_LONG
from engine.pml import kvm_arch_sync_dirty_log
from engine.trace import DirtyRingHarvest, DirtyRingReset, ResetDirtyPages, traced


def harvest_and_reset(kvm: Kvm) -> list[int] | None:
    """Read every vCPU's published entries, then KVM_RESET_DIRTY_RINGS; the sorted distinct gfns read.

    Outside ring mode the kernel refuses the reset (-EINVAL) and there is nothing to read: None. With
    PML, userspace first kicks every vCPU out of the guest, so that their logs are flushed onto the rings.
    """
    if kvm.policy.dirty_log_mode != "ring":
        ioctl_error(kvm, "KVM_RESET_DIRTY_RINGS", "EINVAL", "the VM has no dirty rings")
        return None
    kvm_arch_sync_dirty_log(kvm)
    read: list[int] = []
    for vcpu in kvm.vcpus:
        gfns = [kvm.memslots.by_id[slot_id].base_gfn + offset for slot_id, offset in vcpu.dirty_ring.entries]
        if kvm.tp.on:
            kvm.tp.emit(DirtyRingHarvest(vcpu.id, tuple(gfns)))
        read.extend(gfns)
    kvm_vm_ioctl_reset_dirty_pages(kvm)
    harvested = sorted(set(read))
    kvm.log.harvested.extend(harvested)
    # A ring harvest covers every logged slot at once: a store pending in any of them must be in it.
    kvm.log.harvested_slots.extend(slot.id for slot in kvm.memslots if slot.dirty_bitmap is not None)
    return harvested


@traced(ResetDirtyPages)
def kvm_vm_ioctl_reset_dirty_pages(kvm: Kvm) -> int:
    """Reset every vCPU's collected entries, then flush once if any entry was reset."""
    cleared = sum(kvm_dirty_ring_reset(kvm, vcpu) for vcpu in kvm.vcpus)
    if kvm.tp.on:
        kvm.tp.emit(ResetDirtyPages(cleared, bool(cleared)))
    if cleared:
        kvm_flush_remote_tlbs(kvm, "kvm_vm_ioctl_reset_dirty_pages", under_mmu_lock=False)
    return cleared


@traced(DirtyRingReset)
def kvm_dirty_ring_reset(kvm: Kvm, vcpu: Vcpu) -> int:
    """Re-protect the pages of the vCPU's collected entries and recycle them; returns how many.

    Neighbouring entries of one slot are gathered into a (first page, 64-bit mask) pair, growing the mask
    upwards, or downwards while no bit falls off its top, so that one call of the masked write-protect
    serves a run of nearby pages; any other entry starts a new pair.
    """
    ring = vcpu.dirty_ring
    entries = ring.entries
    ring.entries = []
    cur_slot, base, mask = -1, 0, 0
    for slot_id, offset in entries:
        if mask and slot_id == cur_slot:
            delta = offset - base
            if 0 <= delta < BITS_PER_LONG:
                mask |= 1 << delta
                continue
            if -BITS_PER_LONG < delta < 0 and (mask << -delta) >> BITS_PER_LONG == 0:
                mask = (mask << -delta) | 1
                base = offset
                continue
        if mask:
            kvm_reset_dirty_gfn(kvm, cur_slot, base, mask)
        cur_slot, base, mask = slot_id, offset, 1
    if mask:
        kvm_reset_dirty_gfn(kvm, cur_slot, base, mask)
    if kvm.tp.on:
        kvm.tp.emit(DirtyRingReset(vcpu.id, len(entries)))
    return len(entries)


def kvm_reset_dirty_gfn(kvm: Kvm, slot_id: int, offset: int, mask: int) -> None:
    """Re-arm logging for the pages of one gathered mask, as GET_DIRTY_LOG does for a bitmap long.

    The model's index of pages with a pending entry (the slot's `dirty_bitmap`, see `mark_page_dirty`)
    forgets them here: every entry is reset at once, so none of these pages has an entry left.
    """
    slot = kvm.memslots.by_id.get(slot_id)
    if slot is None or offset + mask.bit_length() > slot.npages:
        return
    bitmap = slot.dirty_bitmap
    if bitmap is not None:
        bits = mask
        while bits:
            page = offset + (bits & -bits).bit_length() - 1
            bitmap[page >> 3] &= ~(1 << (page & 7)) & 0xFF
            kvm.log.reprotected.append(slot.base_gfn + page)
            bits &= bits - 1
    kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, offset, mask)
