"""The invariants under shadow paging, checked after every step: those of engine.invariants, read the
way an indirect shadow page needs (an entry's gfn is its `gfns` entry, a TLB entry is keyed by guest-
virtual page and checked against the vCPU's own root), and two of the shadow MMU's own:

- `shadowed_gfn_writable`: a gfn that holds a shadowed guest table (a live indirect shadow page of it
  that is not unsync) has no writable spte and no writable TLB entry, else the guest could change its
  table without KVM seeing it, and the shadow would go stale;
- `write_count_covers_shadowed`: each 2M and 1G range's lpage write count is at least the number of
  live indirect shadow pages in it, else mapping_level could map a shadowed table by a huge spte.

shadow-mmu.md §3 also asks that every shadowed gfn have a page reachable from a root. The kernel does
not keep that: a shadow page unlinked from its parent (a guest PDE rewritten through the emulator,
validate_direct_spte, a huge spte over a table) stays in the hash, still shadowing and write-protecting
its gfn, until it is zapped or found again. The model keeps those orphans as the kernel does, so it does
not check that rule.

`ShadowStepChecker` checks what a step could have broken; `check_shadow_state` the whole state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.invariants import StepChecker, Violation, _check_lpages, _Collector, _where, in_get_window
from engine.kvm import Kvm, Vcpu
from engine.memslot import KvmMemorySlot, gfn_to_index
from engine.rmap import pte_list
from engine.shadow_cpu import shadow_leaf
from engine.shadow_page import KvmMmuPage, kvm_mmu_page_get_gfn
from engine.spte import (
    KVM_NR_PAGE_SIZES,
    PT64_LEVEL_BITS,
    PT_DIRECTORY_LEVEL,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    is_large_pte,
    is_last_spte,
    is_shadow_present_pte,
    level_name,
    pages_per_hpage,
    spte_to_pfn,
)
from engine.tlb import TlbEntry

SHADOW_INVARIANTS = ("shadowed_gfn_writable", "write_count_covers_shadowed")


def _shadowed(kvm: Kvm) -> dict[int, KvmMmuPage]:
    """gfn -> a live indirect page shadowing it and not unsync (the first in creation order)."""
    out: dict[int, KvmMmuPage] = {}
    for sp in kvm.active_mmu_pages.values():
        if not sp.direct and not sp.invalid and not sp.unsync:
            out.setdefault(sp.gfn, sp)
    return out


def _check_leaf(
    kvm: Kvm, sp: KvmMmuPage, index: int, shadowed: dict[int, KvmMmuPage], found: _Collector
) -> None:
    spte = sp.spt[index]
    level = sp.level
    gfn = kvm_mmu_page_get_gfn(sp, index)
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        found.add("rmap_consistency", gfn, f"the leaf {_where(sp, index)} maps gfn {gfn:#x}, which belongs to"
                  " no memslot")
        return
    head = pte_list(slot.rmap[level - 1].get(gfn_to_index(gfn, slot.base_gfn, level)))
    if head.count((sp, index)) != 1:
        found.add("rmap_consistency", gfn, f"the leaf {_where(sp, index)} for gfn {gfn:#x} is in its rmap"
                  f" {head.count((sp, index))} times instead of once")
    if not spte & PT_WRITABLE_MASK:
        return
    lockless = kvm.masks.lockless_mask
    if spte & lockless != lockless:
        found.add("w_implies_hw_mw", gfn, f"{_where(sp, index)} for gfn {gfn:#x} is writable without both HW"
                  " and MW")
    span = pages_per_hpage(level)
    for table_gfn, table in shadowed.items():
        if gfn <= table_gfn < gfn + span:
            found.add("shadowed_gfn_writable", table_gfn, f"{_where(sp, index)} maps gfn {table_gfn:#x}"
                      f" writable, but the guest table there is shadowed ({table!r}, not unsync): the guest"
                      " can change it without KVM seeing")
    _check_logged(kvm, slot, gfn, level, found)


def _check_logged(kvm: Kvm, slot: KvmMemorySlot, gfn: int, level: int, found: _Collector) -> None:
    """A writable leaf of a logged slot: never a huge one, and a 4K one only over a page already dirty."""
    if slot.dirty_bitmap is None:
        return
    if level > PT_PAGE_TABLE_LEVEL:
        if not slot.all_dirty(gfn, pages_per_hpage(level)):
            found.add("no_writable_large_while_logging", gfn, f"a writable {level_name(level)} spte maps gfns"
                      f" {gfn:#x}-{gfn + pages_per_hpage(level) - 1:#x} while slot {slot.id} is dirty-logged:"
                      " stores anywhere in it take no fault and set no dirty bit")
    elif not slot.test_dirty(gfn):
        found.add("writable_implies_dirty_bit", gfn, f"gfn {gfn:#x} has a writable 4K spte while slot"
                  f" {slot.id} is logged, but its dirty bit is clear: stores to it would not be reported")


def _check_rmaps(kvm: Kvm, found: _Collector) -> None:
    """Every rmap entry is a present leaf of its level mapping a gfn of its head."""
    for slot in kvm.memslots:
        for level, heads in enumerate(slot.rmap, start=PT_PAGE_TABLE_LEVEL):
            for key, head in heads.items():
                for sp, index in pte_list(head):
                    spte = sp.spt[index]
                    gfn = kvm_mmu_page_get_gfn(sp, index)
                    leaf = is_shadow_present_pte(spte) and is_last_spte(spte, sp.level)
                    if not leaf or sp.level != level or gfn_to_index(gfn, slot.base_gfn, level) != key:
                        found.add("rmap_consistency", gfn, f"the level-{level} rmap of slot {slot.id} holds"
                                  f" {_where(sp, index)}, which is not a present leaf mapping that gfn")


def _check_write_counts(kvm: Kvm, found: _Collector) -> None:
    for level in range(PT_DIRECTORY_LEVEL, PT_PAGE_TABLE_LEVEL + KVM_NR_PAGE_SIZES):
        needed: dict[tuple[int, int], int] = {}
        for sp in kvm.active_mmu_pages.values():
            if sp.direct or sp.invalid:
                continue
            slot = kvm.gfn_to_memslot(sp.gfn)
            if slot is not None:
                where = (slot.id, gfn_to_index(sp.gfn, slot.base_gfn, level))
                needed[where] = needed.get(where, 0) + 1
        for (slot_id, key), count in needed.items():
            have = kvm.memslots.by_id[slot_id].lpage_write_count[level - 2][key]
            if have < count:
                found.add("write_count_covers_shadowed", None, f"a {level_name(level)} range of slot"
                          f" {slot_id} holds {count} shadowed guest tables but its write count is {have}: a"
                          " huge spte could map them")


def _check_tlb(kvm: Kvm, vcpu: Vcpu, key: int, entry: TlbEntry, shadowed: dict[int, KvmMmuPage],
               found: _Collector) -> None:
    vfn = key << (PT64_LEVEL_BITS * (entry.level - 1))
    what = f"vCPU {vcpu.id}'s TLB maps gva {vfn << 12:#x} to gfn {entry.gfn:#x} ({level_name(entry.level)}"
    what += ", writable)" if entry.writable else ", read-only)"
    if entry.writable:
        span = pages_per_hpage(entry.level)
        for table_gfn in shadowed:
            if entry.gfn <= table_gfn < entry.gfn + span:
                found.add("shadowed_gfn_writable", table_gfn, f"{what}, over the shadowed guest table at gfn"
                          f" {table_gfn:#x}: the guest can change it without KVM seeing")
    if in_get_window(kvm, entry.gfn):
        return
    leaf = shadow_leaf(kvm, vcpu, vfn)
    if leaf is None:
        found.add("tlb_more_permissive_than_spte", entry.gfn, f"{what} but no spte maps it any more: a flush"
                  " is missing")
        return
    sp, index, spte = leaf
    # The leaf for the entry's first page; where it is larger than the entry, the page's offset in it.
    if spte_to_pfn(spte) + (vfn & (pages_per_hpage(sp.level) - 1)) != entry.pfn:
        found.add("tlb_more_permissive_than_spte", entry.gfn, f"{what} but its spte now points elsewhere: a"
                  " flush is missing")
    elif entry.writable and not spte & PT_WRITABLE_MASK:
        found.add("tlb_more_permissive_than_spte", entry.gfn, f"{what} but its spte {_where(sp, index)} is"
                  " read-only: stores through the TLB bypass write protection until a flush")


def check_shadow_state(kvm: Kvm, step: int) -> list[Violation]:
    """Every state invariant of a shadow-paging VM (not `written_not_logged`, which needs history)."""
    found = _Collector(step)
    shadowed = _shadowed(kvm)
    large = 0
    for sp in kvm.active_mmu_pages.values():
        for index, spte in enumerate(sp.spt):
            if not spte & PT_PRESENT_MASK or not is_last_spte(spte, sp.level):
                continue
            large += is_large_pte(spte)
            if sp.level <= KVM_NR_PAGE_SIZES:
                _check_leaf(kvm, sp, index, shadowed, found)
    _check_lpages(kvm, large, found)
    _check_rmaps(kvm, found)
    _check_write_counts(kvm, found)
    for vcpu in kvm.vcpus:
        for level, entries in enumerate(vcpu.tlb.by_level, start=1):
            for key, entry in entries.items():
                if entry.level == level:
                    _check_tlb(kvm, vcpu, key, entry, shadowed, found)
    return found.out


def _check_shadowed_gfns(kvm: Kvm, shadowed: dict[int, KvmMmuPage], found: _Collector) -> None:
    """No spte maps a shadowed guest table writable (through its rmaps, at every level)."""
    for table_gfn in shadowed:
        slot = kvm.gfn_to_memslot(table_gfn)
        if slot is None:
            continue
        for level, heads in enumerate(slot.rmap, start=PT_PAGE_TABLE_LEVEL):
            for sp, index in pte_list(heads.get(gfn_to_index(table_gfn, slot.base_gfn, level))):
                if sp.spt[index] & PT_WRITABLE_MASK:
                    _check_leaf(kvm, sp, index, shadowed, found)


@dataclass(slots=True)
class ShadowStepChecker(StepChecker):
    """StepChecker for a shadow-paging VM. Per step it looks at what the step could have broken: every
    spte it wrote (a leaf against its rmap and the W rules, a leaf removed out of its rmap), every spte
    of a slot whose logging it switched on, the 4K sptes of the pages a harvest re-protected, the rmaps
    of every shadowed guest table, the write counts, and the TLBs when it took a permission away or
    shadowed a new table; then the history of the stores to logged pages (`written_not_logged`) and
    the livelocks, as under TDP. `check_shadow_state` looks at everything; the tests hold the two to the
    same answers."""

    shadowed_seen: set[int] = field(default_factory=set)

    def check_step(self, kvm: Kvm, step: int) -> list[Violation]:
        log = kvm.log
        found = _Collector(step)
        shadowed = _shadowed(kvm)
        lowered = False
        large_delta = 0
        ad_bits = kvm.masks.accessed_mask | kvm.masks.dirty_mask
        # The inner loop over every spte the step wrote: raw bit tests, as the TDP checker's.
        for key, old in log.touched.items():
            sp, index = key
            new = sp.spt[index]
            level = sp.level
            if old & PT_PRESENT_MASK and not (old ^ new) & ~(ad_bits | PT_WRITABLE_MASK):
                # A present spte that gained A/D or lost W: nothing it maps changed.
                lowered |= bool(old & ~new & PT_WRITABLE_MASK)
                continue
            old_leaf = bool(old & PT_PRESENT_MASK) and (level == 1 or bool(old & PT_PAGE_SIZE_MASK))
            new_leaf = bool(new & PT_PRESENT_MASK) and (level == 1 or bool(new & PT_PAGE_SIZE_MASK))
            large_delta += (new_leaf and level > 1) - (old_leaf and level > 1)
            if sp.invalid or level > KVM_NR_PAGE_SIZES:
                continue
            lowered |= bool(old & PT_PRESENT_MASK)  # gone or pointing elsewhere
            if new_leaf and level == PT_PAGE_TABLE_LEVEL and _quiet_4k_leaf(kvm, sp, index, new, shadowed):
                continue
            if new_leaf:
                _check_leaf(kvm, sp, index, shadowed, found)
            elif old_leaf:
                _check_gone(kvm, sp, index, found)
        self.lpages_seen += large_delta
        _check_lpages(kvm, self.lpages_seen, found)
        for slot_id in log.logging_enabled:
            for heads in kvm.memslots.by_id[slot_id].rmap:
                for head in heads.values():
                    for sp, index in pte_list(head):
                        _check_leaf(kvm, sp, index, shadowed, found)
        for gfn in log.reprotected:
            slot = kvm.gfn_to_memslot(gfn)
            if slot is not None:
                for sp, index in pte_list(slot.rmap[0].get(gfn - slot.base_gfn)):
                    if (sp, index) in log.touched:
                        continue  # written by the step, looked at above
                    if not _quiet_4k_leaf(kvm, sp, index, sp.spt[index], shadowed):
                        _check_leaf(kvm, sp, index, shadowed, found)
        _check_shadowed_gfns(kvm, shadowed, found)
        _check_write_counts(kvm, found)
        if lowered or not set(shadowed) <= self.shadowed_seen:
            for vcpu in kvm.vcpus:
                for level, entries in enumerate(vcpu.tlb.by_level, start=1):
                    for page, entry in entries.items():
                        if entry.level == level:
                            _check_tlb(kvm, vcpu, page, entry, shadowed, found)
        self.shadowed_seen = set(shadowed)
        self._check_writes(kvm, step, found)
        for vcpu_id, vfn, write in log.livelocks:
            found.add("fault_livelock", None, f"vCPU {vcpu_id}'s {'store to' if write else 'load of'} gva"
                      f" {vfn << 12:#x} faulted again and again without progress: the guest would hang")
        return found.out


def _quiet_4k_leaf(kvm: Kvm, sp: KvmMmuPage, index: int, spte: int, shadowed: dict[int, KvmMmuPage]) -> bool:
    """What _check_leaf would find nothing in, for a 4K leaf, answered in a few tests (every fault leaves
    one): alone in its rmap head, and if writable with HW and MW, over a page already dirty when logged,
    and no shadowed guest table."""
    gfns = sp.gfns
    gfn = gfns[index] if gfns is not None else sp.gfn + index
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        return False
    offset = gfn - slot.base_gfn
    if slot.rmap[0].get(offset) != (sp, index):
        return False
    if not spte & PT_WRITABLE_MASK:
        return True
    lockless = kvm.masks.lockless_mask
    bitmap = slot.dirty_bitmap
    return (
        spte & lockless == lockless
        and (bitmap is None or bool(bitmap[offset >> 3] >> (offset & 7) & 1))
        and gfn not in shadowed
    )


def _check_gone(kvm: Kvm, sp: KvmMmuPage, index: int, found: _Collector) -> None:
    """A leaf the step removed is in no rmap any more (an indirect page keeps its old gfn in gfns[])."""
    gfn = kvm_mmu_page_get_gfn(sp, index)
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        return
    for level, heads in enumerate(slot.rmap, start=PT_PAGE_TABLE_LEVEL):
        if (sp, index) in pte_list(heads.get(gfn_to_index(gfn, slot.base_gfn, level))):
            found.add("rmap_consistency", gfn, f"{_where(sp, index)} is not a present leaf but is still in"
                      f" the level-{level} rmap of gfn {gfn:#x}")
