"""Reverse maps: for each gfn and level, the sptes that map it (mmu.c rmap_add/rmap_remove, pte_list).

The kernel packs an rmap head as a single pointer or a chain of descriptors; an ordered list keeps the same
iteration order and makes the "restart after removal" of pre-3.16 write protection easy to follow.
"""

from __future__ import annotations

from engine.kvm import Kvm
from engine.memslot import KvmMemorySlot, gfn_to_index
from engine.shadow_page import KvmMmuPage, kvm_mmu_page_get_gfn
from engine.spte import PT64_LEVEL_BITS


def gfn_to_rmap_slot(kvm: Kvm, gfn: int) -> KvmMemorySlot:
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:  # a direct MMU only maps gfns of slots, so this is an engine bug
        raise AssertionError(f"gfn {gfn:#x} has no memslot but has an spte")
    return slot


def rmap_add(kvm: Kvm, sp: KvmMmuPage, index: int, gfn: int) -> int:
    """Add the spte to the rmap of its sp's level, keyed by the gfn it maps; returns the head's length."""
    slot = kvm.gfn_to_memslot(gfn) or gfn_to_rmap_slot(kvm, gfn)
    level = sp.level
    shift = PT64_LEVEL_BITS * (level - 1)
    key = (gfn >> shift) - (slot.base_gfn >> shift)  # gfn_to_index
    heads = slot.rmap[level - 1]
    head = heads.get(key)
    if head is None:
        heads[key] = head = []
    head.append((sp, index))
    return len(head)


def rmap_remove(kvm: Kvm, sp: KvmMmuPage, index: int) -> None:
    gfn = kvm_mmu_page_get_gfn(sp, index)
    slot = gfn_to_rmap_slot(kvm, gfn)
    key = gfn_to_index(gfn, slot.base_gfn, sp.level)
    heads = slot.rmap[sp.level - 1]
    head = heads.get(key)
    if head is None or (sp, index) not in head:
        raise AssertionError(f"rmap_remove: spte {sp}[{index:#x}] is not in the rmap of gfn {gfn:#x}")
    head.remove((sp, index))
    if not head:
        del heads[key]
