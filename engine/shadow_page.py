"""`struct kvm_mmu_page`: one table of 512 sptes, its role, gfn and parents.

Mirrors mmu.c's shadow page bookkeeping in 3.14/3.16 (kvm_mmu_alloc_page, the gfn hash, parent_ptes,
kvm_mmu_page_get_gfn). Under TDP every page is direct: an entry's gfn follows from its position.
Under shadow paging most are indirect: they shadow a guest page table (`gfn` is that table's gfn), so
each entry's gfn is whatever the guest PTE said, kept in `gfns`; they can be unsync, and count the
emulated writes to their guest table (write flooding).

Sptes themselves are ints in `spt`; only `Kvm.write_spte` (and `Kvm.write_sptes` and
`Kvm.clear_spte_bits`, the same store for many entries of one table) may store into it.
"""

from __future__ import annotations

from engine.spte import PT64_ENT_PER_PAGE, pages_per_hpage

# Where an spte lives: its shadow page and its index in that page (the kernel's `u64 *sptep`).
SptePtr = tuple["KvmMmuPage", int]

# An rmap head, as the kernel's pte_list packs it: the one spte in place, or a list once there are more.
RmapHead = SptePtr | list[SptePtr]


# mmu.h's ACC_*: the access rights a role and a guest walk carry (W and U where the PTE has them).
ACC_EXEC_MASK = 1
ACC_WRITE_MASK = 1 << 1
ACC_USER_MASK = 1 << 2
ACC_ALL = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK


class KvmMmuPage:
    __slots__ = (
        "access",
        "direct",
        "gfn",
        "gfns",
        "gva",
        "invalid",
        "level",
        "parent_ptes",
        "pfn",
        "root_count",
        "serial",
        "spt",
        "unsync",
        "unsync_children",
        "write_flooding_count",
    )

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
        # role.direct and role.access: a direct page maps gfns from its position (every TDP page, and under
        # shadow paging the small pages that map a guest huge page); `access` is what the guest allowed.
        self.direct = True
        self.access = ACC_ALL
        # Indirect only: the gfn of each entry's guest PTE (kvm_mmu_page_set_gfn), the first guest-virtual
        # page its range covers (for people: the kernel keeps no such field), and the unsync state.
        self.gfns: list[int] | None = None
        self.gva = 0
        self.unsync = False
        self.unsync_children: set[int] | None = None  # unsync_child_bitmap, made on first use
        self.write_flooding_count = 0

    def __repr__(self) -> str:
        return f"<sp L{self.level} gfn {self.gfn:#x}>"


def kvm_mmu_page_get_gfn(sp: KvmMmuPage, index: int) -> int:
    """The first gfn entry `index` maps: for a direct sp derived from the position, for an indirect one
    what the guest PTE said when the spte was set (sp->gfns)."""
    if sp.gfns is not None:
        return sp.gfns[index]
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
