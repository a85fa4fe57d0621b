"""Reverse maps: for each gfn and level, the sptes that map it (mmu.c rmap_add/rmap_remove, pte_list).

The kernel packs an rmap head in one word: the spte pointer itself while it is alone, a chain of
descriptors once there are more, and back to the single pointer when removals leave one. Here the single
entry is the (sp, index) tuple in place and the chain an ordered list, which keeps the kernel's iteration
order and makes the "restart after removal" of pre-3.16 write protection easy to follow. Nearly every
head under a direct MMU holds one spte, so the packing saves a list per mapped page, as it saves the
kernel a descriptor.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

from engine.kvm import Kvm
from engine.memslot import KvmMemorySlot, gfn_to_index
from engine.shadow_page import KvmMmuPage, RmapHead, SptePtr, kvm_mmu_page_get_gfn
from engine.spte import PT64_LEVEL_BITS


def pte_list(head: RmapHead | None) -> Sequence[SptePtr]:
    """The sptes of an rmap head, in order: none, the single one, or the chain (pte_list_walk)."""
    if head is None:
        return ()
    if isinstance(head, tuple):
        return (head,)
    return head


def gfn_to_rmap_slot(kvm: Kvm, gfn: int) -> KvmMemorySlot:
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:  # a direct MMU only maps gfns of slots, so this is an engine bug
        raise AssertionError(f"gfn {gfn:#x} has no memslot but has an spte")
    return slot


def rmap_add(kvm: Kvm, sp: KvmMmuPage, index: int, gfn: int) -> int:
    """Add the spte to the rmap of its sp's level, keyed by the gfn it maps; returns the head's length.

    pte_list_add: an empty head takes the spte in place; a second spte turns it into a chain.
    """
    slot = kvm.gfn_to_memslot(gfn) or gfn_to_rmap_slot(kvm, gfn)
    level = sp.level
    shift = PT64_LEVEL_BITS * (level - 1)
    key = (gfn >> shift) - (slot.base_gfn >> shift)  # gfn_to_index
    heads = slot.rmap[level - 1]
    head = heads.get(key)
    if head is None:
        heads[key] = (sp, index)
        return 1
    if isinstance(head, tuple):
        heads[key] = [head, (sp, index)]
        return 2
    head.append((sp, index))
    return len(head)


def rmap_remove(kvm: Kvm, sp: KvmMmuPage, index: int) -> None:
    """pte_list_remove: take the spte out; a chain left with one spte goes back to holding it in place."""
    gfn = kvm_mmu_page_get_gfn(sp, index)
    slot = gfn_to_rmap_slot(kvm, gfn)
    key = gfn_to_index(gfn, slot.base_gfn, sp.level)
    heads = slot.rmap[sp.level - 1]
    head = heads.get(key)
    ptr = (sp, index)
    if head is None or ptr not in pte_list(head):
        raise AssertionError(f"rmap_remove: spte {sp}[{index:#x}] is not in the rmap of gfn {gfn:#x}")
    if isinstance(head, tuple):
        del heads[key]
        return
    head.remove(ptr)
    if len(head) == 1:
        heads[key] = head[0]


def rmap_remove_sptes(kvm: Kvm, sp: KvmMmuPage, indexes: range | list[int]) -> None:
    """rmap_remove for the sptes at `indexes` of `sp`, in order.

    A direct MMU's table nearly always maps the gfns of one slot, each spte alone in its rmap head (as a
    zapped 4K table's leaves are): then the heads are checked all at once and simply go. Anything else
    is removed one spte at a time."""
    if not indexes:
        return
    slot = kvm.gfn_to_memslot(kvm_mmu_page_get_gfn(sp, indexes[0]))
    if slot is not None and slot.contains(kvm_mmu_page_get_gfn(sp, indexes[-1])):
        heads = slot.rmap[sp.level - 1]
        first_key = gfn_to_index(sp.gfn, slot.base_gfn, sp.level)  # entry i's key is first_key + i
        keys = _shifted(indexes, first_key)
        if list(map(heads.get, keys)) == list(zip(repeat(sp), indexes)):
            for key in keys:
                del heads[key]
            return
    for index in indexes:
        rmap_remove(kvm, sp, index)


def _shifted(indexes: range | list[int], offset: int) -> range | list[int]:
    """Each of `indexes` plus `offset`, a range staying a range."""
    if isinstance(indexes, range):
        return range(indexes.start + offset, indexes.stop + offset, indexes.step)
    return [offset + index for index in indexes]
