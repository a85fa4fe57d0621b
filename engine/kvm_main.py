"""The generic KVM pieces the MMU calls into (virt/kvm/kvm_main.c in 3.14/3.16).

`mark_page_dirty` (with the dirty ring's `kvm_dirty_ring_push`, virt/kvm/dirty_ring.c),
`kvm_flush_remote_tlbs`, and the host page lookup (`gfn_to_pfn` via `hva_to_pfn`) with its copy-on-write
behaviour.
"""

from __future__ import annotations

from engine.kvm import Kvm, Vcpu
from engine.memslot import KvmMemorySlot
from engine.trace import DirtyRingPush, FlushRemoteTlbs, GfnToPfn, MarkPageDirty, traced


@traced(MarkPageDirty)
def mark_page_dirty(kvm: Kvm, gfn: int, caller: str) -> None:
    """Set the gfn's bit if its slot is dirty-logged; a no-op otherwise, exactly as in the kernel.

    With the dirty ring (KVM_CAP_DIRTY_LOG_RING) the page goes onto the running vCPU's ring instead. The
    slot's `dirty_bitmap` is then the model's index of pages with an entry not yet reset (the kernel keeps
    no bitmap), so that "is this slot logged" and the invariants read alike in every mode. A mark without
    a running vCPU has no ring to go to: the kernel warns and drops it; every mark of the model comes from
    a vCPU's access, so that branch is never taken.
    """
    slot = kvm.gfn_to_memslot(gfn)
    bitmap = slot.dirty_bitmap if slot is not None else None
    logged = bitmap is not None
    if bitmap is not None and slot is not None:
        offset = gfn - slot.base_gfn
        if kvm.policy.dirty_log_mode == "ring":
            vcpu = kvm.running_vcpu
            if vcpu is None:
                logged = False
            else:
                kvm_dirty_ring_push(kvm, vcpu, slot, offset)
        if logged:
            bitmap[offset >> 3] |= 1 << (offset & 7)
            kvm.log.marked_dirty[gfn] = None
    if kvm.tp.on:
        kvm.tp.emit(MarkPageDirty(gfn, slot.id if slot else None, logged, caller))


def kvm_dirty_ring_push(kvm: Kvm, vcpu: Vcpu, slot: KvmMemorySlot, offset: int) -> None:
    """Publish (slot, offset) on the vCPU's ring. Entries are not merged: the same page can appear again.

    The push itself never fails: the soft limit leaves room for the pushes a vCPU makes before it
    notices, at its next guest entry, that it must exit (see engine.cpu)."""
    ring = vcpu.dirty_ring
    ring.entries.append((slot.id, offset))
    if kvm.tp.on:
        kvm.tp.emit(DirtyRingPush(vcpu.id, slot.id, offset, slot.base_gfn + offset, len(ring.entries)))


def kvm_flush_remote_tlbs(kvm: Kvm, caller: str, under_mmu_lock: bool) -> None:
    """Every vCPU flushes its whole TLB before it next enters the guest.

    The kernel counts `remote_tlb_flush` only when some vCPU had to be kicked; with no concurrency to
    model, every call counts.
    """
    kvm.stat.remote_tlb_flush += 1
    kvm.log.tlb_flushes += 1
    dropped = sum(vcpu.tlb.flush() for vcpu in kvm.vcpus)
    if kvm.tp.on:
        kvm.tp.emit(FlushRemoteTlbs(caller, under_mmu_lock, dropped))


def gfn_to_pfn(kvm: Kvm, slot: KvmMemorySlot, gfn: int, write_fault: bool) -> tuple[int, bool, bool]:
    """hva_to_pfn: the host page, whether it may be mapped writable (`map_writable`), and whether the
    lookup copied a shared copy-on-write page (the host's page-table change fires the mmu notifier: see
    engine.mmu_notifier). A page the process owns alone (`host_cow: reuse`) is made writable in place,
    with no notifier.

    A write fault breaks copy-on-write first, so its page is always writable. A read fault still asks for
    a writable page but settles for a read-only one when the host PTE is not writable (an unbroken COW
    page): then the spte is built without HW. The pfn itself is kept across a COW break (a modelling
    simplification: the copy's contents are what the guest sees either way).
    """
    pfn = slot.base_pfn + (gfn - slot.base_gfn)
    if slot.host_writable:  # ordinary memory: nothing to break
        broken, map_writable = False, True
    else:
        broken = slot.break_cow(pfn) if write_fault else False
        map_writable = slot.host_page_writable(pfn)
    copied = broken and slot.host_cow_copies
    if kvm.tp.on:
        kvm.tp.emit(GfnToPfn(gfn, pfn, write_fault, map_writable, broken, copied))
    return pfn, map_writable, copied
