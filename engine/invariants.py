"""The invariants of spec section 3.13 and contract section 4, checked after every step.

`StepChecker` checks what a step could have broken, from what the step recorded (the sptes it wrote, the
bits GET_DIRTY_LOG cleared, the stores that landed in logged slots), so a step costs in proportion to what
it did. Every rmap change goes with an spte change, so checking each written spte against its rmap head
(and the head's other entries against the head) covers the rmaps a step touched. `check_all` walks the
whole state; the tests use it to show that the incremental checks miss nothing. Violations are data:
`lazy-buggy` must produce them, `zap` and `lazy` never.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby, islice
from operator import itemgetter

from engine.kvm import Kvm
from engine.memslot import KvmMemorySlot, gfn_to_index
from engine.pml import pml_holds
from engine.rmap import pte_list
from engine.shadow_page import KvmMmuPage, as_range, entries_at, kvm_mmu_page_get_gfn
from engine.spte import (
    KVM_NR_PAGE_SIZES,
    LARGE_LEAF_BY_LOW_BYTE,
    PT64_BASE_ADDR_MASK,
    PT64_LEVEL_BITS,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    READ_ONLY_BY_LOW_BYTE,
    count_where,
    is_large_pte,
    is_last_spte,
    is_shadow_present_pte,
    is_writable_pte,
    level_name,
    low_bytes,
    pages_per_hpage,
    spte_to_pfn,
)
from engine.tdp_iter import for_each_shadow_entry, spte_to_child_sp, walk_spte
from engine.tlb import TlbEntry

INVARIANTS = (
    "rmap_consistency",
    "w_implies_hw_mw",
    "lpages_count",
    "no_writable_large_while_logging",
    "writable_implies_dirty_bit",
    "tlb_more_permissive_than_spte",
    "written_not_logged",
    "fault_livelock",
)


@dataclass(frozen=True, slots=True)
class Violation:
    step: int
    invariant: str
    gfn: int | None
    message: str

    def as_json(self) -> dict[str, object]:
        return {"step": self.step, "invariant": self.invariant, "gfn": self.gfn, "message": self.message}


def _where(sp: KvmMmuPage, index: int) -> str:
    return f"L{sp.level}[{index:#x}] (sp gfn {sp.gfn:#x})"


def _is_leaf(sp: KvmMmuPage, spte: int) -> bool:
    return is_shadow_present_pte(spte) and is_last_spte(spte, sp.level)


class _Collector:
    def __init__(self, step: int) -> None:
        self.step = step
        self.out: list[Violation] = []
        self._seen: set[tuple[str, int | None, str]] = set()

    def add(self, invariant: str, gfn: int | None, message: str) -> None:
        key = (invariant, gfn, message)
        if key not in self._seen:
            self._seen.add(key)
            self.out.append(Violation(self.step, invariant, gfn, message))


# --- checks shared by the incremental and the full checker ---------------------------------------------


def _check_spte(kvm: Kvm, sp: KvmMmuPage, index: int, found: _Collector) -> None:
    """rmap membership, W ⇒ HW ∧ MW, no writable large spte and W ⇒ dirty bit, for one location.

    A writable large spte on a logged slot lets stores through without a fault, so without a mark. That
    is harmless only while every page it maps still has its dirty bit set, as after enabling logging
    with KVM_DIRTY_LOG_INITIALLY_SET (the next harvest reports those pages whatever happens to them, and
    the CLEAR that first clears one of their bits write-protects the large spte in the same ioctl); any
    other writable large spte on a logged slot is `no_writable_large_while_logging`. With the dirty ring
    the "dirty bit" is the model's index of pages with a ring entry not yet reset (see mark_page_dirty).

    With PML a writable 4K spte is the rule, not a hole: a store through it whose D is clear makes the CPU
    log the page. What lets a store through unlogged is a writable spte with D already set, so that one
    needs the page's dirty bit, or the page waiting in a vCPU's PML buffer (flushed before any harvest).

    Runs for every spte a step wrote, so the predicates are spelled as bit tests.
    """
    spte = sp.spt[index]
    level = sp.level
    shift = PT64_LEVEL_BITS * (level - 1)
    gfn = sp.gfn + (index << shift)
    slot = kvm.gfn_to_memslot(gfn)
    # Called for every spte of the state: the bits are read raw, as in the other inner loops.
    leaf = spte & PT_PRESENT_MASK and (level == PT_PAGE_TABLE_LEVEL or spte & PT_PAGE_SIZE_MASK)
    if level > KVM_NR_PAGE_SIZES:
        return  # a root entry is never a leaf and no rmap is kept at that level
    if slot is not None:
        key = (gfn >> shift) - (slot.base_gfn >> shift)
        head = pte_list(slot.rmap[level - 1].get(key))
        if len(head) > 1:
            _check_rmap_head(kvm, slot, level, key, found)
        if leaf:
            if head.count((sp, index)) != 1:
                count = head.count((sp, index))
                found.add("rmap_consistency", gfn, f"the leaf {_where(sp, index)} for gfn {gfn:#x} is in "
                          f"its rmap {count} times instead of once")
        elif (sp, index) in head:
            found.add("rmap_consistency", gfn, f"{_where(sp, index)} is not a present leaf but is still "
                      f"in the rmap of gfn {gfn:#x}")
    elif leaf:
        found.add("rmap_consistency", gfn, f"the leaf {_where(sp, index)} maps gfn {gfn:#x}, "
                  "which belongs to no memslot")
    if not leaf or not spte & PT_WRITABLE_MASK:
        return
    lockless = kvm.masks.lockless_mask
    if spte & lockless != lockless:  # spte_is_locklessly_modifiable
        found.add("w_implies_hw_mw", gfn, f"{_where(sp, index)} for gfn {gfn:#x} is writable without "
                  "both HW and MW")
    if slot is None or slot.dirty_bitmap is None:
        return
    if spte & PT_PAGE_SIZE_MASK:
        if slot.all_dirty(gfn, pages_per_hpage(level)):
            return  # INITIALLY_SET: every page it maps is already reported dirty, nothing can be lost
        found.add("no_writable_large_while_logging", gfn, f"a writable {level_name(level)} spte maps "
                  f"gfns {gfn:#x}-{gfn + pages_per_hpage(level) - 1:#x} while slot {slot.id} is "
                  "dirty-logged: stores anywhere in it take no fault and set no dirty bit")
    elif not slot.dirty_bitmap[(gfn - slot.base_gfn) >> 3] >> ((gfn - slot.base_gfn) & 7) & 1:
        if kvm.cpu_dirty_log_size:
            if spte & kvm.masks.dirty_mask and not pml_holds(kvm, gfn):
                found.add("writable_implies_dirty_bit", gfn, f"gfn {gfn:#x} has a writable 4K spte with D "
                          f"set while slot {slot.id} is logged with PML, but its dirty bit is clear and no "
                          "PML buffer holds it: stores to it would not be reported")
            return
        found.add("writable_implies_dirty_bit", gfn, f"gfn {gfn:#x} has a writable 4K spte while slot "
                  f"{slot.id} is logged, but its dirty bit is clear: stores to it would not be reported")


def _check_rmap_head(kvm: Kvm, slot: KvmMemorySlot, level: int, key: int, found: _Collector) -> None:
    for sp, index in pte_list(slot.rmap[level - 1].get(key)):
        spte = sp.spt[index]
        gfn = kvm_mmu_page_get_gfn(sp, index)
        if not _is_leaf(sp, spte) or sp.level != level or gfn_to_index(gfn, slot.base_gfn, level) != key:
            found.add("rmap_consistency", gfn, f"the level-{level} rmap of slot {slot.id} holds "
                      f"{_where(sp, index)}, which is not a present leaf mapping that gfn")


def in_get_window(kvm: Kvm, gfn: int) -> bool:
    """Whether `gfn` is in a slot whose split GET_DIRTY_LOG still owes its flush: until it returns, a TLB
    may hold the W it just took away, as 198c74f4 intends (the ioctl flushes before it returns)."""
    if not kvm.split_gets:
        return False
    slot = kvm.gfn_to_memslot(gfn)
    return slot is not None and kvm.split_gets.get(slot.id, ((), False))[1]


def _check_tlb_entry(kvm: Kvm, vcpu: int, entry: TlbEntry, found: _Collector) -> None:
    if in_get_window(kvm, entry.gfn):
        return
    leaf = walk_spte(kvm, entry.gfn)
    what = f"vCPU {vcpu}'s TLB maps gfn {entry.gfn:#x} ({level_name(entry.level)}"
    what += ", writable)" if entry.writable else ", read-only)"
    if leaf is None:
        found.add("tlb_more_permissive_than_spte", entry.gfn, f"{what} but no spte maps it any more: "
                  "a flush is missing")
        return
    sp, index, spte = leaf
    leaf_gfn = kvm_mmu_page_get_gfn(sp, index)
    if sp.level < entry.level:
        # A huge page split in place keeps every translation and permission, so later kernels link the
        # new table without a flush; the larger TLB entry is stale only if some smaller leaf differs.
        differs = _finer_leaves_differ(kvm, entry)
        if differs:
            found.add("tlb_more_permissive_than_spte", entry.gfn, f"{what} but the sptes now map it with "
                      f"{level_name(sp.level)} pages and {differs}: a flush is missing")
    elif spte_to_pfn(spte) + (entry.gfn - leaf_gfn) != entry.pfn:
        found.add("tlb_more_permissive_than_spte", entry.gfn, f"{what} to pfn {entry.pfn:#x} but its "
                  "spte now points elsewhere: a flush is missing")
    elif entry.writable and not is_writable_pte(spte):
        found.add("tlb_more_permissive_than_spte", entry.gfn, f"{what} but its spte {_where(sp, index)} "
                  "is read-only: stores through the TLB bypass write protection until a flush")
    elif _dirty_cached_over_clean(kvm, entry, spte):
        found.add("tlb_more_permissive_than_spte", entry.gfn, f"{what} with D cached but its spte "
                  f"{_where(sp, index)} has D clear: stores through the TLB are not logged by PML until "
                  "a flush")


def _dirty_cached_over_clean(kvm: Kvm, entry: TlbEntry, spte: int) -> bool:
    """With PML, a writable TLB entry that cached D over an spte whose D is now clear: a store through it
    neither re-walks nor sets D, so the CPU logs nothing (the window the flush after clearing D closes)."""
    return bool(
        kvm.cpu_dirty_log_size and entry.writable and entry.dirty and not spte & kvm.masks.dirty_mask
    )


def _harvest_name(kvm: Kvm) -> str:
    return "ring harvest" if kvm.policy.dirty_log_mode == "ring" else "GET_DIRTY_LOG"


def _finer_leaves_differ(kvm: Kvm, entry: TlbEntry) -> str | None:
    """What a leaf under the range of a TLB entry larger than it allows less of (nothing mapped, another
    pfn, no W under a writable entry), or None when every leaf allows all that the entry does."""
    # The caller found a smaller leaf, so every entry on the way down to the entry's level is a pointer.
    for walked in for_each_shadow_entry(kvm, entry.gfn):
        if walked[0] == entry.level:
            break
    return _leaves_differ(kvm, spte_to_child_sp(kvm, walked[3]), entry)


def _leaves_differ(kvm: Kvm, table: KvmMmuPage, entry: TlbEntry) -> str | None:
    span = pages_per_hpage(table.level)
    for index, spte in enumerate(table.spt):
        gfn = table.gfn + index * span
        if not is_shadow_present_pte(spte):
            return f"gfn {gfn:#x} is not mapped"
        if not is_last_spte(spte, table.level):
            differs = _leaves_differ(kvm, spte_to_child_sp(kvm, spte), entry)
            if differs:
                return differs
        elif spte_to_pfn(spte) != entry.pfn + (gfn - entry.gfn):
            return f"gfn {gfn:#x} points elsewhere"
        elif entry.writable and not is_writable_pte(spte):
            return f"gfn {gfn:#x} is read-only"
        elif _dirty_cached_over_clean(kvm, entry, spte):
            return f"gfn {gfn:#x} has D clear"
    return None


def _check_lpages(kvm: Kvm, large: int, found: _Collector) -> None:
    """The large-page statistics against `large`, the present large leaves the caller counted.

    `stat.pages` (6.x's pages_2m and pages_1g) must equal it. The 3.x count `stat.lpages` must too, but
    for the large sptes 3.14/3.16's mmu-notifier path dropped without counting them down, which the
    kernel's `largepages` keeps showing: the model keeps that drift, and checks it is only that.
    """
    stat = kvm.stat
    if stat.large_leaves != large:
        found.add("lpages_count", None, f"pages_2m + pages_1g is {stat.large_leaves} but {large} large "
                  "leaf sptes are present")
    elif stat.lpages - stat.lpages_uncounted != large:
        found.add("lpages_count", None, f"stat.lpages is {stat.lpages} but {large} large leaf sptes are "
                  f"present ({stat.lpages_uncounted} dropped by the mmu notifier and never counted down)")


# --- the incremental checker -----------------------------------------------------------------------------

# Runs of at least this many touched entries of one table (an eighth of it) are first judged as a whole
# (_judge_run); shorter ones, as faults or a GET_DIRTY_LOG of a few pages leave, entry by entry, and a
# step with fewer touched entries is not even grouped into runs.
_WHOLE_RUN = 64


@dataclass(slots=True)
class _Runs:
    """What judging runs of touched entries as a whole found: their change in large leaves, and per slot
    id the 4K rmap heads quiet runs were found in."""

    large_delta: int = 0
    quiet_heads: dict[int, int] = field(default_factory=dict)


def _judge_runs(
    kvm: Kvm, touched: dict[tuple[KvmMmuPage, int], int], tlbs_live: bool, runs: _Runs
) -> Iterator[tuple[tuple[KvmMmuPage, int], int]]:
    """The touched entries left to look at one by one, in touched order: taken a run of one table at a
    time, each long run is judged as a whole first (_judge_run), and what that found goes to `runs`."""
    values = iter(touched.values())
    for table, entries in groupby(touched, key=itemgetter(0)):
        run = list(entries)
        olds = list(islice(values, len(run)))
        judged = _judge_run(kvm, table, run, olds, tlbs_live) if len(run) >= _WHOLE_RUN else None
        if judged is None:
            yield from zip(run, olds, strict=True)
            continue
        delta, quiet = judged
        runs.large_delta += delta
        if quiet is not None:
            runs.quiet_heads[quiet.id] = runs.quiet_heads.get(quiet.id, 0) + len(run)


def _judge_run(
    kvm: Kvm, table: KvmMmuPage, run: list[tuple[KvmMmuPage, int]], olds: list[int], tlbs_live: bool
) -> tuple[int, KvmMemorySlot | None] | None:
    """The touched entries `run` of `table` (`olds` before the step) judged as a whole, when the
    entry-by-entry checks of check_step would find nothing in any of them but a change in the large
    leaves: the table was zapped, or the run is a quiet 4K run (_quiet_4k_run) with every TLB empty.
    Returns that change and the quiet run's slot (None for a zapped table); None when the entries need
    a look one by one."""
    indexes = as_range(list(map(itemgetter(1), run)))
    news = entries_at(table, indexes)
    if table.invalid:
        return count_where(news, LARGE_LEAF_BY_LOW_BYTE) - count_where(olds, LARGE_LEAF_BY_LOW_BYTE), None
    if tlbs_live:
        return None
    news_low = low_bytes(news)
    quiet = _quiet_4k_run(kvm, table, run, indexes, news_low)
    if quiet is None:
        return None
    large_after = news_low.translate(LARGE_LEAF_BY_LOW_BYTE).count(1)
    return large_after - count_where(olds, LARGE_LEAF_BY_LOW_BYTE), quiet


def _quiet_4k_run(
    kvm: Kvm, sp: KvmMmuPage, run: list[tuple[KvmMmuPage, int]], indexes: range | list[int], news_low: bytes
) -> KvmMemorySlot | None:
    """The slot of `run`, touched entries `indexes` of the 4K table `sp` whose low bytes are now
    `news_low`, if each is a present, read-only leaf alone in its rmap head (the tuple of its touched
    key) in that one slot: then the entry-by-entry checks have nothing to look at (TLBs aside). That is
    what write-protecting a freshly split table leaves, 512 entries at a time."""
    if sp.level != PT_PAGE_TABLE_LEVEL:
        return None
    if news_low.translate(READ_ONLY_BY_LOW_BYTE).count(1) != len(news_low):
        return None
    if isinstance(indexes, range):
        lowest, highest = indexes[0], indexes[-1]
    else:
        lowest, highest = min(indexes), max(indexes)
    slot = kvm.gfn_to_memslot(sp.gfn + lowest)
    if slot is None or not slot.contains(sp.gfn + highest):
        return None
    first = sp.gfn - slot.base_gfn  # the rmap key of entry 0
    if isinstance(indexes, range):
        keys: range | list[int] = range(first + indexes.start, first + indexes.stop)
    else:
        keys = [first + index for index in indexes]
    return slot if list(map(slot.rmap[0].get, keys)) == run else None


@dataclass(slots=True)
class StepChecker:
    """Carries what the checks need across steps: the large-spte count the choke point saw, and the
    stores to logged pages whose dirty bit was clear, waiting for the next harvest.

    A harvest is what reports pages to userspace: GET_DIRTY_LOG in every bitmap mode (with manual
    protection it reports without clearing; KVM_CLEAR_DIRTY_LOG reports nothing, it only re-arms), or the
    harvest of every vCPU's ring before KVM_RESET_DIRTY_RINGS. A store is logged when the next harvest
    of its slot reports its page, or, at the end, when its page is still pending in the bitmap or a ring.
    """

    lpages_seen: int = 0
    # slot id -> gfn -> the step of the first unreported store.
    pending: dict[int, dict[int, int]] = field(default_factory=dict)

    def check_step(self, kvm: Kvm, step: int) -> list[Violation]:
        log = kvm.log
        found = _Collector(step)
        touched = log.touched
        tlbs_live = any(len(vcpu.tlb) for vcpu in kvm.vcpus)
        # With PML, losing D is lowering too: a TLB entry that cached D would let stores through unlogged.
        lost_mask = PT_WRITABLE_MASK | (kvm.masks.dirty_mask if kvm.cpu_dirty_log_size else 0)
        lowered: list[tuple[KvmMmuPage, int]] = []
        large_delta = 0
        gfn_to_memslot = kvm.gfn_to_memslot
        lockless = kvm.masks.lockless_mask
        slot: KvmMemorySlot | None = None  # the slot of the last 4K leaf looked at: runs share one
        runs: _Runs | None = None
        entries: Iterable[tuple[tuple[KvmMmuPage, int], int]] = touched.items()
        if len(touched) >= _WHOLE_RUN:
            # A step that wrote whole tables (split, zapped, write-protected): judge those runs first.
            runs = _Runs()
            entries = _judge_runs(kvm, touched, tlbs_live, runs)
        # The inner loop over every spte the step wrote (a million for a 1 GiB slot): raw bit tests.
        for key, old in entries:
            sp, index = key
            new = sp.spt[index]
            if (old | new) & PT_PAGE_SIZE_MASK:
                large_delta += bool(new & PT_PRESENT_MASK and new & PT_PAGE_SIZE_MASK) - bool(
                    old & PT_PRESENT_MASK and old & PT_PAGE_SIZE_MASK
                )
            if sp.invalid:
                continue
            # Less than before (gone, read-only, pointing elsewhere): a TLB may still hold what it was.
            if (
                tlbs_live
                and old & PT_PRESENT_MASK
                and (
                    not new & PT_PRESENT_MASK
                    or old & ~new & lost_mask
                    or (old ^ new) & PT64_BASE_ADDR_MASK
                )
            ):
                lowered.append(key)
            level = sp.level
            if level == PT_PAGE_TABLE_LEVEL and new & PT_PRESENT_MASK:
                # A 4K leaf, as every fault leaves one: the checks of _check_spte spelled out for the
                # common answers, since this runs once per fault. Anything unusual takes the long way.
                remapped = not old & PT_PRESENT_MASK or (old ^ new) & PT64_BASE_ADDR_MASK
                if not remapped and not new & PT_WRITABLE_MASK:
                    continue  # lost W or gained A/D: nothing to look at
                gfn = sp.gfn + index
                if slot is None or not slot.base_gfn <= gfn < slot.base_gfn + slot.npages:
                    slot = gfn_to_memslot(gfn)
                if slot is not None:
                    # An rmap holding this spte alone keeps it in place, as the tuple `key` (engine.rmap).
                    ok = not remapped or slot.rmap[0].get(gfn - slot.base_gfn) == key
                    if ok and new & PT_WRITABLE_MASK:
                        bitmap = slot.dirty_bitmap
                        offset = gfn - slot.base_gfn
                        ok = new & lockless == lockless and (
                            bitmap is None or bool(bitmap[offset >> 3] >> (offset & 7) & 1)
                        )
                    if ok:
                        continue
                _check_spte(kvm, sp, index, found)
                continue
            # Only a change of leafness or target can break rmap membership, and only a writable leaf
            # can break the W rules: a leaf that merely lost W or gained A/D needs no look.
            old_leaf = bool(old & PT_PRESENT_MASK and (level == 1 or old & PT_PAGE_SIZE_MASK))
            new_leaf = bool(new & PT_PRESENT_MASK and (level == 1 or new & PT_PAGE_SIZE_MASK))
            if (
                old_leaf != new_leaf
                or (new_leaf and new & PT_WRITABLE_MASK)
                or (new_leaf and (old ^ new) & PT64_BASE_ADDR_MASK)
            ):
                _check_spte(kvm, sp, index, found)
        if runs is not None:
            large_delta += runs.large_delta
        self.lpages_seen += large_delta
        _check_lpages(kvm, self.lpages_seen, found)
        for slot_id in log.logging_enabled:
            slot = kvm.memslots.by_id[slot_id]
            quiet_heads = runs.quiet_heads.get(slot_id, 0) if runs is not None else 0
            self._check_slot_sptes(kvm, slot, touched, quiet_heads, found)
        self._check_harvested(kvm, touched, found)
        self._check_tlbs(kvm, lowered, found)
        self._check_writes(kvm, step, found)
        for vcpu, gfn, write in log.livelocks:
            found.add("fault_livelock", gfn, f"vCPU {vcpu}'s {'store to' if write else 'load of'} gfn "
                      f"{gfn:#x} faulted again and again without progress: the guest would hang")
        return found.out

    def _check_slot_sptes(
        self,
        kvm: Kvm,
        slot: KvmMemorySlot,
        touched: dict[tuple[KvmMmuPage, int], int],
        quiet_heads: int,
        found: _Collector,
    ) -> None:
        """Logging was switched on: every spte of the slot must now obey the logging rules. The ones the
        step wrote were judged above (a split can write every spte of a 1G page); the others are here.
        `quiet_heads` 4K rmap heads were found holding sptes the step wrote, one each: when that is all
        of them, no 4K head is left to look at."""
        for level, heads in enumerate(slot.rmap, start=PT_PAGE_TABLE_LEVEL):
            if level == PT_PAGE_TABLE_LEVEL and quiet_heads == len(heads):
                continue
            for head in heads.values():
                if isinstance(head, tuple):  # the usual single spte, looked at without building a list
                    if head not in touched:
                        _check_spte(kvm, head[0], head[1], found)
                    continue
                for ptr in head:
                    if ptr not in touched:
                        _check_spte(kvm, ptr[0], ptr[1], found)

    def _check_harvested(
        self, kvm: Kvm, touched: dict[tuple[KvmMmuPage, int], int], found: _Collector
    ) -> None:
        """A page whose bit a harvest cleared (GET_DIRTY_LOG, CLEAR_DIRTY_LOG, a ring reset) must not keep
        a writable 4K spte, or with PML a dirty (D set) one (sptes the step wrote are already checked)."""
        keep = kvm.masks.dirty_mask if kvm.cpu_dirty_log_size else PT_WRITABLE_MASK
        slot: KvmMemorySlot | None = None
        for gfn in kvm.log.reprotected:  # runs of one slot's gfns, in order
            if slot is None or not slot.base_gfn <= gfn < slot.base_gfn + slot.npages:
                slot = kvm.gfn_to_memslot(gfn)
                if slot is None:
                    continue
            head = slot.rmap[PT_PAGE_TABLE_LEVEL - 1].get(gfn - slot.base_gfn)
            if isinstance(head, tuple):  # the usual single spte, looked at without building a list
                sp, index = head
                if sp.spt[index] & keep and head not in touched:
                    _check_spte(kvm, sp, index, found)
            elif head:
                for ptr in head:
                    sp, index = ptr
                    if sp.spt[index] & keep and ptr not in touched:
                        _check_spte(kvm, sp, index, found)

    def _check_tlbs(self, kvm: Kvm, lowered: list[tuple[KvmMmuPage, int]], found: _Collector) -> None:
        for vcpu in kvm.vcpus:
            if not len(vcpu.tlb):
                continue
            for sp, index in dict.fromkeys(lowered):
                gfn = kvm_mmu_page_get_gfn(sp, index)
                for entry in vcpu.tlb.entries_overlapping(gfn, sp.level):
                    _check_tlb_entry(kvm, vcpu.id, entry, found)

    def _check_writes(self, kvm: Kvm, step: int, found: _Collector) -> None:
        log = kvm.log
        harvested = set(log.harvested)
        for slot_id in dict.fromkeys(log.harvested_slots):
            for gfn, when in sorted(self.pending.pop(slot_id, {}).items()):
                if gfn not in harvested:
                    found.add("written_not_logged", gfn, f"gfn {gfn:#x} was written at step {when} while "
                              f"slot {slot_id} was logged, and no {_harvest_name(kvm)} reported it")
        for gfn in log.discarded:
            # Userspace cleared the page's bit itself: whatever a store there left unreported, it chose
            # to drop (as it drops a store a fault already marked). PML's drain before the CLEAR can be
            # the mark that bit held.
            slot = kvm.gfn_to_memslot(gfn)
            if slot is not None:
                self.pending.get(slot.id, {}).pop(gfn, None)
        for slot in kvm.memslots:
            if slot.dirty_bitmap is None:
                self.pending.pop(slot.id, None)  # logging stopped: nobody asks for those pages any more
        for gfn, slot_id in log.unlogged_writes:
            self.pending.setdefault(slot_id, {}).setdefault(gfn, step)

    def finish(self, kvm: Kvm, step: int) -> list[Violation]:
        """At the end of the scenario, stores still unreported and not in the current bitmap are lost. A
        store waiting in a vCPU's PML buffer is not: every harvest flushes the buffers first."""
        found = _Collector(step)
        for slot_id, writes in sorted(self.pending.items()):
            slot = kvm.memslots.by_id[slot_id]
            for gfn, when in sorted(writes.items()):
                if slot.dirty_bitmap is not None and not slot.test_dirty(gfn) and not pml_holds(kvm, gfn):
                    found.add("written_not_logged", gfn, f"gfn {gfn:#x} was written at step {when} while "
                              f"slot {slot_id} was logged, and neither a {_harvest_name(kvm)} nor the "
                              f"current {'rings' if kvm.policy.dirty_log_mode == 'ring' else 'bitmap'} "
                              "report it")
        self.pending.clear()
        return found.out


# --- the full checker --------------------------------------------------------------------------------------


def check_all(kvm: Kvm, step: int) -> list[Violation]:
    """Every state invariant over the whole state (not `written_not_logged`, which needs history). A
    shadow-paging VM has its own reading of them (engine.shadow_invariants, built on this module)."""
    if kvm.shadow:
        from engine.shadow_invariants import check_shadow_state  # noqa: PLC0415 (it imports this module)

        return check_shadow_state(kvm, step)
    found = _Collector(step)
    large = 0
    for sp in kvm.active_mmu_pages.values():
        nonpresent = kvm.masks.nonpresent
        for index, spte in enumerate(sp.spt):
            if spte != nonpresent:
                _check_spte(kvm, sp, index, found)
            if _is_leaf(sp, spte) and is_large_pte(spte):
                large += 1
    for slot in kvm.memslots:
        for level, heads in enumerate(slot.rmap, start=1):
            for key in heads:
                _check_rmap_head(kvm, slot, level, key, found)
    _check_lpages(kvm, large, found)
    for vcpu in kvm.vcpus:
        for entry in vcpu.tlb.entries():
            _check_tlb_entry(kvm, vcpu.id, entry, found)
    return found.out
