"""Walking the tables: 6.x's `struct tdp_iter` (mmu/tdp_iter.{h,c}) and 3.x's `shadow_walk_iterator`
(mmu.c `for_each_shadow_entry`), written once for every pass that goes down the tree.

A walk is either along one address, root to leaf (`for_each_shadow_entry`: the fault path, the lockless
fast path, the checks and the views), or pre-order over a gfn range (`for_each_tdp_pte`: eager splitting,
huge page recovery, what a view counts), handing out a `TdpIter` that can step down, sideways and up. The
caller may act on the entry it is given: the walk reads the entry again before stepping down, as
`try_step_down` and `__shadow_walk_next` do in the kernel, so a table the body has just linked, or a huge
leaf it has just split, is walked into, and a pointer it has just zapped is not.

The passes over all 512 entries of one table (write protection of a run, a table zapped, the checks of a
written run) stay loops over `sp.spt`: an iterator per entry would cost more than the work.
"""

from __future__ import annotations

from collections.abc import Iterator

from engine.kvm import Kvm
from engine.shadow_page import KvmMmuPage
from engine.spte import (
    PAGE_SHIFT,
    PT64_BASE_ADDR_MASK,
    PT64_ENT_PER_PAGE,
    PT64_LEVEL_BITS,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    is_last_spte,
    is_shadow_present_pte,
    pages_per_hpage,
    spte_index,
    spte_to_child_pfn,
)


def spte_to_child_sp(kvm: Kvm, spte: int) -> KvmMmuPage:
    """`spte_to_child_sp` (3.x `page_header(spte & PT64_BASE_ADDR_MASK)`): the table a present non-leaf
    spte points at."""
    return kvm.sp_by_pfn[spte_to_child_pfn(spte)]


def round_gfn_for_level(gfn: int, level: int) -> int:
    """The first gfn of the entry at `level` that maps `gfn`."""
    return gfn & -pages_per_hpage(level)


class TdpIter:
    """`struct tdp_iter`: where a walk stands. `sp` and `index` are the entry (the kernel's `sptep`),
    `old_spte` its value when the iterator got there, `gfn` the first gfn it maps, `level` the level of
    the table holding it. `pt_path` holds the table of every level above, for stepping back up."""

    __slots__ = (
        "gfn",
        "index",
        "kvm",
        "level",
        "min_level",
        "next_last_level_gfn",
        "old_spte",
        "pt_path",
        "root_level",
        "sp",
        "valid",
    )

    def __init__(
        self, kvm: Kvm, root: KvmMmuPage, start_gfn: int, min_level: int = PT_PAGE_TABLE_LEVEL
    ) -> None:
        self.kvm = kvm
        self.root_level = root.level
        self.min_level = min_level
        self.next_last_level_gfn = start_gfn
        self.pt_path: list[KvmMmuPage] = [root] * root.level
        self.level = root.level
        self.sp = root
        self.gfn = round_gfn_for_level(start_gfn, root.level)
        self.index = spte_index(self.gfn, root.level)
        self.old_spte = root.spt[self.index]
        self.valid = True

    def try_step_down(self) -> bool:
        """Into the table the current entry points at, read again now; False at `min_level`, on a leaf
        or on a non-present entry."""
        if self.level == self.min_level:
            return False
        spte = self.sp.spt[self.index]
        self.old_spte = spte
        if not is_shadow_present_pte(spte) or is_last_spte(spte, self.level):
            return False
        child = spte_to_child_sp(self.kvm, spte)
        self.level -= 1
        self.pt_path[self.level - 1] = child
        self.sp = child
        self.gfn = round_gfn_for_level(self.next_last_level_gfn, self.level)
        self.index = spte_index(self.gfn, self.level)
        self.old_spte = child.spt[self.index]
        return True

    def try_step_side(self) -> bool:
        """To the next entry of the same table; False after its last one."""
        if self.index == PT64_ENT_PER_PAGE - 1:
            return False
        self.gfn += pages_per_hpage(self.level)
        self.next_last_level_gfn = self.gfn
        self.index += 1
        self.old_spte = self.sp.spt[self.index]
        return True

    def try_step_up(self) -> bool:
        """Back to the entry that points at the current table; False at the root."""
        if self.level == self.root_level:
            return False
        self.level += 1
        self.sp = self.pt_path[self.level - 1]
        self.gfn = round_gfn_for_level(self.gfn, self.level)
        self.index = spte_index(self.gfn, self.level)
        self.old_spte = self.sp.spt[self.index]
        return True

    def tdp_iter_next(self) -> None:
        """Pre-order: down if the entry is a table, else sideways, else up until a side step is possible."""
        if self.try_step_down():
            return
        while not self.try_step_side():
            if not self.try_step_up():
                self.valid = False
                return


def for_each_tdp_pte(
    kvm: Kvm, root: KvmMmuPage, start_gfn: int, end_gfn: int, min_level: int = PT_PAGE_TABLE_LEVEL
) -> Iterator[TdpIter]:
    """`for_each_tdp_pte_min_level`: every present entry under `root` that overlaps [start_gfn, end_gfn),
    at `min_level` and above, parents before children."""
    it = TdpIter(kvm, root, start_gfn, min_level)
    while it.valid and it.gfn < end_gfn:
        if is_shadow_present_pte(it.old_spte):
            yield it
        it.tdp_iter_next()


# Where a walk along one address stands (3.x `struct kvm_shadow_walk_iterator`): (level, the table, the
# index of the entry in it (together the kernel's `sptep`), the entry's value when the walk got there).
ShadowEntry = tuple[int, KvmMmuPage, int, int]


def for_each_shadow_entry(kvm: Kvm, gfn: int, root: KvmMmuPage | None = None) -> Iterator[ShadowEntry]:
    """`for_each_shadow_entry`: the entries that translate `gfn`, from `root` (the VM's root unless told;
    a level-1 table the root is known to route `gfn` to, as `Kvm.l1_table` gives, is a shortcut) down
    to the leaf, the first non-present entry, or level 1. The caller may link a table where the entry
    was empty, or split the huge leaf it found: the entry is read again before the walk steps down
    (`__shadow_walk_next`), so it goes on down through it.

    It runs for every fault, so it is written out with local variables and raw bit tests rather than
    through `TdpIter`, and hands out plain tuples."""
    sp = kvm.root if root is None else root
    level = sp.level
    sp_by_pfn = kvm.sp_by_pfn
    while True:
        index = (gfn >> (PT64_LEVEL_BITS * (level - 1))) & (PT64_ENT_PER_PAGE - 1)
        yield level, sp, index, sp.spt[index]
        if level == PT_PAGE_TABLE_LEVEL:
            return
        spte = sp.spt[index]
        if not spte & PT_PRESENT_MASK or spte & PT_PAGE_SIZE_MASK:
            return
        sp = sp_by_pfn[(spte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT]
        level -= 1


def find_shadow_page(kvm: Kvm, gfn: int, level: int) -> KvmMmuPage | None:
    """The live (not zapped) table of the gfn hash for (gfn, level), the kernel's
    `for_each_valid_sp(kvm, sp, gfn)` with a matching role."""
    for sp in kvm.mmu_page_hash.get((gfn, level), ()):
        if not sp.invalid:
            return sp
    return None


def walk_spte(kvm: Kvm, gfn: int, root: KvmMmuPage | None = None) -> tuple[KvmMmuPage, int, int] | None:
    """The present leaf (sp, index, spte) the walk from `root` (the VM's unless told) for `gfn` ends on,
    or None: what the hardware would use. Under shadow paging `gfn` is a guest-virtual page number and
    `root` a vCPU's."""
    *_, (level, sp, index, spte) = for_each_shadow_entry(kvm, gfn, root)
    if not is_shadow_present_pte(spte) or not is_last_spte(spte, level):
        return None
    return sp, index, spte
