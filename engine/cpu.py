"""The guest's side: a load or store goes through the vCPU's TLB, then the EPT walk, then faults.

Mirrors what the CPU does under VMX (SDM, EPT and its A/D flags) and vmx.c's `handle_ept_violation`, which
turns the exit qualification into the page-fault error code that `tdp_page_fault` reads. An access is
retried after each fault, as the guest would; one that never completes is reported as a livelock.
"""

from __future__ import annotations

from engine.kvm import FaultRecord, Kvm, Vcpu, store_landed
from engine.mmu import PFERR_PRESENT_MASK, PFERR_WRITE_MASK, RET_PF_FIXED, RET_PF_SPURIOUS
from engine.page_fault import tdp_page_fault
from engine.pml import handle_pml_full, pml_log, vmx_flush_pml_buffer
from engine.shadow_page import KvmMmuPage
from engine.spte import (
    PT64_BASE_ADDR_MASK,
    PT64_LEVEL_BITS,
    PT64_ROOT_LEVEL,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
)
from engine.tdp_iter import walk_spte
from engine.tlb import TlbEntry
from engine.trace import DirtyRingFull, EptAdUpdate, GuestAccess, HandleEptViolation, traced

_new_tuple = tuple.__new__

# More faults than this on one access means no progress: the guest would loop forever.
MAX_FAULTS_PER_ACCESS = 4

# What ept_walk returns instead of an error code when a store would set D with PML enabled and the vCPU's
# log is full: the CPU makes a PML-full exit before the store (not an EPT violation).
EXIT_REASON_PML_FULL = -1


def ept_walk(kvm: Kvm, vcpu: Vcpu, gfn: int, write: bool) -> int | None:
    """Walk the EPT for `gfn`. On success set A (and D for a store), fill the TLB and return None.

    On failure return the page-fault error code: PRESENT when the translation was readable. With PML
    enabled, a store that sets D also logs the page in the vCPU's PML buffer; if the buffer is full the
    store does not happen and EXIT_REASON_PML_FULL is returned.

    The hardware's walk, made for every TLB miss of a million accesses: written out level by level with
    raw bit tests (with the level-1 table the root is known to route `gfn` to as a shortcut), not through
    engine.tdp_iter, whose for_each_shadow_entry walks the same path for the MMU.
    """
    accessed = kvm.masks.accessed_mask
    l1 = kvm.l1_tables.get(gfn >> PT64_LEVEL_BITS)
    if l1 is not None:  # every entry above it is a present pointer with A set
        sp, level, index = l1, 1, gfn & 511
        spte = sp.spt[index]
        if not spte & PT_PRESENT_MASK:
            return PFERR_WRITE_MASK if write else 0
    else:
        sp, level = kvm.root, PT64_ROOT_LEVEL
        sp_by_pfn = kvm.sp_by_pfn
        while True:
            index = (gfn >> (PT64_LEVEL_BITS * (level - 1))) & 511
            spte = sp.spt[index]
            if not spte & PT_PRESENT_MASK:
                return PFERR_WRITE_MASK if write else 0
            if level == 1 or spte & PT_PAGE_SIZE_MASK:
                break
            if accessed and not spte & accessed:  # link_shadow_page sets A, so this is rare
                _set_ad(kvm, vcpu, sp, index, spte | accessed)
            sp = sp_by_pfn[(spte & PT64_BASE_ADDR_MASK) >> 12]
            level -= 1
            if level == 1:
                kvm.l1_tables[gfn >> PT64_LEVEL_BITS] = sp
    if write and not spte & PT_WRITABLE_MASK:
        return PFERR_PRESENT_MASK | PFERR_WRITE_MASK
    dirty = kvm.masks.dirty_mask
    if accessed:
        new = spte | accessed | (dirty if write else 0)
        if new != spte:
            if write and kvm.pml_enabled and not spte & dirty:
                if vcpu.pml.full():
                    return EXIT_REASON_PML_FULL
                _set_ad(kvm, vcpu, sp, index, new)
                pml_log(kvm, vcpu, gfn)
            else:
                _set_ad(kvm, vcpu, sp, index, new)
            spte = new
    shift = PT64_LEVEL_BITS * (level - 1)
    # TlbEntry(level, gfn, pfn, writable, dirty), filled in place. Without A/D bits there is no dirty
    # flag to set, so a writable entry never re-walks. Built with tuple.__new__, which is what the
    # named tuple's constructor calls, without its Python-level frame: this runs for every TLB fill.
    vcpu.tlb.by_level[level - 1][gfn >> shift] = _new_tuple(
        TlbEntry,
        (
            level,
            (gfn >> shift) << shift,
            (spte & PT64_BASE_ADDR_MASK) >> 12,
            bool(spte & PT_WRITABLE_MASK),
            bool(spte & dirty) or not dirty,
        ),
    )
    return None


def _set_ad(kvm: Kvm, vcpu: Vcpu, sp: KvmMmuPage, index: int, new: int) -> None:
    old = kvm.write_spte(sp, index, new)
    if kvm.tp.on:
        kvm.tp.emit(EptAdUpdate(vcpu.id, sp.level, sp.gfn, index, old, new))


def guest_access(kvm: Kvm, vcpu: Vcpu, gfn: int, write: bool) -> None:
    """One guest load or store of `gfn`, retried after every fault until it completes."""
    guest_accesses(kvm, vcpu, gfn, 1, 0, write)


def guest_accesses(kvm: Kvm, vcpu: Vcpu, gfn: int, count: int, stride: int, write: bool) -> None:
    """`count` guest loads or stores at `gfn + k × stride`, in order, each retried after every fault.

    A loop over guest_access's body: lookups that cannot change while a vCPU runs a sequence of
    accesses (its TLB arrays, whether tracing is on, the slot of the previous access) are made once, since
    a scale run makes a million accesses.
    """
    l1, l2, l3 = vcpu.tlb.by_level
    tracing = kvm.tp.on
    log = kvm.log
    slot = kvm.gfn_to_memslot(gfn)
    # With the dirty ring, a vCPU whose ring is soft full exits to userspace (KVM_EXIT_DIRTY_RING_FULL)
    # instead of entering the guest, at the step's first entry or after a fault, and stays out until the
    # rings are reset. Only a fault pushes an entry, so checking after each fault is checking every entry.
    ring = vcpu.dirty_ring if kvm.policy.dirty_log_mode == "ring" else None
    if ring is not None and ring.soft_full():
        _dirty_ring_full(kvm, vcpu, gfn, count)
        return
    kvm.running_vcpu = vcpu
    try:
        for done in range(count):
            if tracing:
                kvm.tp.enter(GuestAccess.name)
            faults = 0
            walked = False
            livelock = False
            ring_full = False
            while True:
                # The smallest page size first, as a TLB with split arrays answers (this runs per access).
                entry = l1.get(gfn) or l2.get(gfn >> PT64_LEVEL_BITS) or l3.get(gfn >> (2 * PT64_LEVEL_BITS))
                stale = False
                if entry is not None and (not write or (entry.writable and entry.dirty)):
                    break  # satisfied from the TLB: the sptes are not looked at
                if entry is not None and write and not entry.writable:
                    # A store through a read-only cached translation faults without a walk.
                    error_code = PFERR_PRESENT_MASK | PFERR_WRITE_MASK
                    stale = True
                else:
                    # A miss, or a store whose cached entry has no dirty flag yet: the CPU walks the EPT.
                    walk_error = ept_walk(kvm, vcpu, gfn, write)
                    walked = True
                    if walk_error is None:
                        break
                    if walk_error == EXIT_REASON_PML_FULL:
                        # The exit flushes the log; the store is retried at the next entry, which a
                        # ring made soft full by the flush forbids.
                        handle_pml_full(kvm, vcpu)
                        if ring is not None and ring.soft_full():
                            ring_full = True
                            break
                        continue
                    error_code = walk_error
                if faults == MAX_FAULTS_PER_ACCESS:
                    livelock = True
                    break
                faults += 1
                handle_ept_violation(kvm, vcpu, gfn, write, error_code, stale)
                if ring is not None and ring.soft_full():
                    ring_full = True
                    break
            if ring_full:
                # The fault is handled but the vCPU does not re-enter: the access has not happened yet.
                _dirty_ring_full(kvm, vcpu, gfn, count - done)
                if tracing:
                    kvm.tp.exit()
                return
            if livelock:
                log.livelocks.append((vcpu.id, gfn, write))
                if tracing:
                    kvm.tp.emit(GuestAccess(vcpu.id, gfn, write, "livelock", faults))
            else:
                if tracing:
                    via = "fault" if faults else "walk" if walked else "tlb"
                    kvm.tp.emit(GuestAccess(vcpu.id, gfn, write, via, faults))
                if write:
                    if slot is None or not slot.base_gfn <= gfn < slot.base_gfn + slot.npages:
                        slot = kvm.gfn_to_memslot(gfn)
                    if slot is not None:
                        store_landed(log, slot, gfn)
            gfn += stride
            if tracing:
                kvm.tp.exit()
    finally:
        kvm.running_vcpu = None


def _dirty_ring_full(kvm: Kvm, vcpu: Vcpu, gfn: int, skipped: int) -> None:
    """kvm_dirty_ring_check_request found the ring soft full: the access at `gfn` and the `skipped` - 1
    after it do not happen in this step."""
    if kvm.tp.on:
        kvm.tp.emit(DirtyRingFull(vcpu.id, gfn, len(vcpu.dirty_ring), skipped))


@traced(HandleEptViolation)
def handle_ept_violation(kvm: Kvm, vcpu: Vcpu, gfn: int, write: bool, error_code: int, stale: bool) -> None:
    kvm.stat.exits += 1
    vcpu.tlb.invalidate_gfn(gfn)
    if vcpu.pml.entries:  # every VM exit flushes the vCPU's PML buffer before it is handled
        vmx_flush_pml_buffer(kvm, vcpu, "exit")
    if kvm.tp.on:
        present = bool(error_code & PFERR_PRESENT_MASK)
        kvm.tp.emit(HandleEptViolation(vcpu.id, gfn, error_code, present, write, stale))
    result = tdp_page_fault(kvm, vcpu, gfn, error_code)
    log = kvm.log
    if result.fast_handled:
        log.fast_faults += 1
    else:
        log.slow_faults += 1
    if kvm.era6:  # kvm_mmu_page_fault's and fast_page_fault's counters
        stat = kvm.stat
        stat.pf_taken += 1
        if result.ret == RET_PF_FIXED:
            stat.pf_fixed += 1
        elif result.ret == RET_PF_SPURIOUS:
            stat.pf_spurious += 1
        if result.fast_handled:
            stat.pf_fast += 1
    if kvm.tp.on:  # the per-fault rows are part of the full detail only
        log.faults.append(
            FaultRecord(
                vcpu=vcpu.id,
                gfn=gfn,
                write=write,
                error_code=error_code,
                path="fast" if result.fast_handled else "slow",
                fast_tried=result.fast_tried,
                fast_result=result.fast_result,
                level=leaf_level(kvm, gfn),
            )
        )


def leaf_level(kvm: Kvm, gfn: int) -> int | None:
    """The level of the leaf spte that maps `gfn` from the root, or None."""
    leaf = walk_spte(kvm, gfn)
    return leaf[0].level if leaf else None
