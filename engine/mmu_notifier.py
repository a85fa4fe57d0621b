"""The mmu notifier's invalidation as KVM handles it: virt/kvm/kvm_main.c
`kvm_mmu_notifier_invalidate_range_start` with 3.14/3.16 mmu.c `kvm_unmap_hva_range` / `kvm_unmap_rmapp`
(6.x: `kvm_unmap_gfn_range`).

The host tells KVM before it changes its own page table for a range of the VM's memory. Here that happens
when a guest write breaks a shared copy-on-write host page (zero page, KSM, a fork): the host copies the
page, so whatever KVM mapped from the old one must go. Every spte mapping a gfn of the host page's range is
dropped, at every level, with one TLB flush if any was, and the invalidation sequence moves on, so that a
fault that looked the host page up meanwhile maps nothing and lets the guest retry.
"""

from __future__ import annotations

from engine.kvm import Kvm
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.memslot import KvmMemorySlot, gfn_to_index
from engine.mmu_spte import drop_spte
from engine.rmap import pte_list
from engine.spte import KVM_NR_PAGE_SIZES, PT64_LEVEL_BITS, PT_PAGE_TABLE_LEVEL, is_large_pte
from engine.trace import traced
from engine.trace_tables import MmuNotifierInvalidateRangeStart


def host_page_gfns(slot: KvmMemorySlot, pfn: int) -> tuple[int, int]:
    """[start, end) of the slot's gfns backed by the host page that holds `pfn` (a hugetlbfs page covers
    2M or 1G of them), cut to the slot."""
    shift = PT64_LEVEL_BITS * (slot.host_level - 1)
    first_pfn = pfn >> shift << shift
    start = slot.base_gfn + (first_pfn - slot.base_pfn)
    end = start + (1 << shift)
    return max(start, slot.base_gfn), min(end, slot.base_gfn + slot.npages)


def kvm_unmap_rmapp(kvm: Kvm, slot: KvmMemorySlot, level: int, key: int) -> int:
    """Drop every spte of one rmap head; returns how many. 3.14/3.16 drop a large spte here without
    counting `stat.lpages` down (the kernel's drop_spte does not, and this path forgets to), so the
    kernel's count stays one too high; 6.x counts every leaf at the spte write."""
    dropped = 0
    for sp, index in list(pte_list(slot.rmap[level - 1].get(key))):
        large = is_large_pte(sp.spt[index])
        drop_spte(kvm, sp, index)
        if large:
            if kvm.era6:
                kvm.stat.lpages -= 1
            else:
                kvm.stat.lpages_uncounted += 1
        dropped += 1
    return dropped


@traced(MmuNotifierInvalidateRangeStart)
def kvm_mmu_notifier_invalidate_range_start(kvm: Kvm, slot: KvmMemorySlot, start: int, end: int) -> int:
    """The host is about to change its mapping of gfns [start, end) of `slot`: drop every spte that maps
    one of them, through the rmaps of every level, flush if any was dropped, and move the invalidation
    sequence on. Returns how many sptes were dropped."""
    dropped = 0
    for level in range(PT_PAGE_TABLE_LEVEL, PT_PAGE_TABLE_LEVEL + KVM_NR_PAGE_SIZES):
        heads = slot.rmap[level - 1]
        first = gfn_to_index(start, slot.base_gfn, level)
        last = gfn_to_index(end - 1, slot.base_gfn, level)
        keys = range(first, last + 1)
        if len(keys) > len(heads):  # a 1G host page over a sparse slot: look only at the heads there are
            keys = sorted(key for key in heads if first <= key <= last)  # type: ignore[assignment]
        for key in keys:
            if key in heads:
                dropped += kvm_unmap_rmapp(kvm, slot, level, key)
    flush = dropped > 0
    if kvm.tp.on:
        kvm.tp.emit(MmuNotifierInvalidateRangeStart(start, end, dropped, flush))
    if flush:
        kvm_flush_remote_tlbs(kvm, "kvm_mmu_notifier_invalidate_range_start", under_mmu_lock=True)
    # kvm_mmu_notifier_invalidate_range_end: the sequence a fault in flight compares against.
    kvm.mmu_notifier_seq += 1
    return dropped
