"""`struct kvm_mmu_page` for a direct (TDP) MMU: one table of 512 sptes, its role level, gfn and parents.

Mirrors mmu.c's shadow page bookkeeping in 3.14/3.16 (kvm_mmu_alloc_page, the gfn hash, parent_ptes,
kvm_mmu_page_get_gfn). Sptes themselves are ints in `spt`; only `Kvm.write_spte` (and `Kvm.write_sptes` and
`Kvm.clear_spte_bits`, the same store for many entries of one table) may store into it.
"""

from __future__ import annotations

from engine.spte import PT64_ENT_PER_PAGE, pages_per_hpage

# Where an spte lives: its shadow page and its index in that page (the kernel's `u64 *sptep`).
SptePtr = tuple["KvmMmuPage", int]

# An rmap head, as the kernel's pte_list packs it: the one spte in place, or a list once there are more.
RmapHead = SptePtr | list[SptePtr]


class KvmMmuPage:
    __slots__ = ("gfn", "invalid", "level", "parent_ptes", "pfn", "root_count", "serial", "spt")

    def __init__(self, gfn: int, level: int, pfn: int, serial: int, nonpresent: int = 0) -> None:
        self.gfn = gfn
        self.level = level  # role.level: the level of the entries this table holds
        self.pfn = pfn  # the (engine-chosen) host page the table lives in: what non-leaf sptes point at
        self.serial = serial  # creation order, standing in for the active_mmu_pages list position
        # A new table is every entry non-present (init_shadow_page_table; 6.x fills it with
        # SHADOW_NONPRESENT_VALUE).
        self.spt: list[int] = [nonpresent] * PT64_ENT_PER_PAGE
        self.parent_ptes: list[SptePtr] = []
        self.root_count = 0
        self.invalid = False

    def __repr__(self) -> str:
        return f"<sp L{self.level} gfn {self.gfn:#x}>"


def kvm_mmu_page_get_gfn(sp: KvmMmuPage, index: int) -> int:
    """The first gfn entry `index` of a direct sp maps: derived from the position, not from any fault."""
    return sp.gfn + index * pages_per_hpage(sp.level)


def as_range(indexes: list[int]) -> range | list[int]:
    """`indexes` as a range when they are consecutive and ascending, as the entries of a table written
    whole are (one slice then reads or stores them all), else as they are."""
    if indexes and indexes == list(range(indexes[0], indexes[0] + len(indexes))):
        return range(indexes[0], indexes[0] + len(indexes))
    return indexes


def entries_at(sp: KvmMmuPage, indexes: range | list[int]) -> list[int]:
    """The sptes of `sp` at `indexes` (a range of step 1, or a list)."""
    if isinstance(indexes, range):
        return sp.spt[indexes.start : indexes.stop]
    return list(map(sp.spt.__getitem__, indexes))
