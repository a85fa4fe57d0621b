"""The generic KVM pieces the MMU calls into (virt/kvm/kvm_main.c in 3.14/3.16).

`mark_page_dirty`, `kvm_flush_remote_tlbs`, and the host page lookup (`gfn_to_pfn` via `hva_to_pfn`) with
its copy-on-write behaviour.
"""

from __future__ import annotations

from engine.kvm import Kvm
from engine.memslot import KvmMemorySlot
from engine.trace import FlushRemoteTlbs, GfnToPfn, MarkPageDirty


def mark_page_dirty(kvm: Kvm, gfn: int, caller: str) -> None:
    """Set the gfn's bit if its slot is dirty-logged; a no-op otherwise, exactly as in the kernel."""
    slot = kvm.gfn_to_memslot(gfn)
    bitmap = slot.dirty_bitmap if slot is not None else None
    if bitmap is not None and slot is not None:
        offset = gfn - slot.base_gfn
        bitmap[offset >> 3] |= 1 << (offset & 7)
        kvm.log.marked_dirty[gfn] = None
    if kvm.tp.on:
        kvm.tp.emit(MarkPageDirty(gfn, slot.id if slot else None, bitmap is not None, caller))


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


def gfn_to_pfn(kvm: Kvm, slot: KvmMemorySlot, gfn: int, write_fault: bool) -> tuple[int, bool]:
    """hva_to_pfn: the host page and whether it may be mapped writable (`map_writable`).

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
    if kvm.tp.on:
        kvm.tp.emit(GfnToPfn(gfn, pfn, write_fault, map_writable, broken))
    return pfn, map_writable
