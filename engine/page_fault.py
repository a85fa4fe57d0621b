"""The fault entry: an EPT violation's error code to the fault path that maps it.

`tdp_page_fault` (3.x mmu.c; 6.x `kvm_tdp_page_fault` by way of mmu_internal.h's `kvm_mmu_do_page_fault`)
chooses the level, tries the lockless fast path, looks the host page up, and then hands the fault to one
MMU's mapping walk: the rmap-based MMU's `__direct_map` (engine/mmu.py), or the 6.x TDP MMU's
`kvm_tdp_mmu_map` (engine/tdp_mmu.py), as the kernel chooses by `tdp_mmu_enabled`. Here the choice is the
policy's `split_on_fault`, the one thing the two walks do differently; every other switch is read inside
them, so a policy that mixes the generations behaves as it always did. A shadow-paging walk
(paging_tmpl.h's FNAME(fetch)) would be one more branch of that choice.
"""

from __future__ import annotations

from typing import NamedTuple

from engine.kvm import Kvm, Vcpu
from engine.kvm_main import gfn_to_pfn
from engine.mmu import (
    PFERR_WRITE_MASK,
    RET_PF_FIXED,
    RET_PF_RETRY,
    RET_PF_SPURIOUS,
    FastPfResult,
    RetPf,
    direct_map,
    fast_page_fault,
    mapping_level,
    page_fault_can_be_fast,
)
from engine.mmu_notifier import host_page_gfns, kvm_mmu_notifier_invalidate_range_start
from engine.spte import PT_PAGE_TABLE_LEVEL, pages_per_hpage
from engine.tdp_mmu import kvm_tdp_mmu_map
from engine.trace import TdpPageFault, traced
from engine.trace_tables import MmuNotifierRetry

# Named tuples built on the fault path skip their constructor's Python frame (see engine.cpu).
_new_tuple = tuple.__new__

# How a fault the fast path handled ended, by what the fast path saw (anything else: fixed).
_FAST_RET: dict[FastPfResult | None, RetPf] = {
    FastPfResult.SPURIOUS: RET_PF_SPURIOUS,
    FastPfResult.RETRY: RET_PF_RETRY,
}


class FaultResult(NamedTuple):
    """How tdp_page_fault ended: handled by the fast path or not, what the fast path saw, and the fault's
    RET_PF_* outcome."""

    fast_tried: bool
    fast_handled: bool
    fast_result: FastPfResult | None
    ret: RetPf


@traced(TdpPageFault)
def tdp_page_fault(kvm: Kvm, vcpu: Vcpu, gfn: int, error_code: int) -> FaultResult:
    """An EPT violation on `gfn`: choose the level, try the fast path, else map under mmu_lock.

    The host page is looked up before mmu_lock is taken. If that lookup broke a shared copy-on-write page,
    the host's copy fired the mmu notifier, which dropped what mapped the old page; the fault sees the
    invalidation sequence moved (mmu_notifier_retry) and maps nothing: the guest faults again and the
    retried fault maps the new, writable page.
    """
    write = bool(error_code & PFERR_WRITE_MASK)
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:  # the scenario validator keeps every access inside a slot
        raise AssertionError(f"fault on gfn {gfn:#x} outside every memslot")
    mmu_seq = kvm.mmu_notifier_seq
    # A logged slot forces 4K mappings: no new large spte is ever created under dirty logging.
    force_pt_level = slot.dirty_bitmap is not None
    if force_pt_level:
        level = PT_PAGE_TABLE_LEVEL
        map_gfn = gfn
    else:
        level = mapping_level(kvm, slot, gfn)
        map_gfn = gfn & ~(pages_per_hpage(level) - 1)
    can_be_fast = page_fault_can_be_fast(error_code)
    if kvm.tp.on:
        kvm.tp.emit(TdpPageFault(vcpu.id, gfn, error_code, force_pt_level, level, can_be_fast))
    fast_result = None
    if can_be_fast:
        handled, fast_result = fast_page_fault(kvm, vcpu, gfn, level, error_code)
        if handled:
            ret = _FAST_RET.get(fast_result, RET_PF_FIXED)
            return _new_tuple(FaultResult, (True, True, fast_result, ret))
    pfn, map_writable, copied = gfn_to_pfn(kvm, slot, map_gfn, write)
    if copied:
        # The host copied the shared page while KVM looked it up: its page-table change fired the mmu
        # notifier, before this fault takes mmu_lock.
        start, end = host_page_gfns(slot, pfn)
        kvm_mmu_notifier_invalidate_range_start(kvm, slot, start, end)
    # mmu_lock is taken here; no THP is modelled, so transparent_hugepage_adjust never changes the level.
    if kvm.mmu_notifier_seq != mmu_seq:
        if kvm.tp.on:
            kvm.tp.emit(MmuNotifierRetry(vcpu.id, gfn))
        return _new_tuple(FaultResult, (can_be_fast, False, fast_result, RET_PF_RETRY))
    # The TDP MMU's fault path is the one that splits a huge leaf in its way; the rmap-based one drops it.
    if kvm.policy.split_on_fault == "split_in_place":
        ret = kvm_tdp_mmu_map(kvm, vcpu, write, map_writable, level, map_gfn, pfn)
    else:
        ret = direct_map(kvm, vcpu, write, map_writable, level, map_gfn, pfn)
    return _new_tuple(FaultResult, (can_be_fast, False, fast_result, ret))
