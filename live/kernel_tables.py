"""The kernel's own page tables, rebuilt from its tracepoints step by step.

Every `kvm_mmu_set_spte` names the spte's address; its page is the table the spte sits in. Grouping the
leaves the kernel set by that page gives the kernel's tables as they are in its memory, each with the
level of its leaves and the gfns they map, which the page draws beside the model's tree.

A table the kernel zaps (`kvm_mmu_prepare_zap_page`) is named by its shadow page's gfn and level, not
by its address; a direct table at level L for gfn G holds the leaves of gfns G .. G + 512^L - 1 at
level L, and an indirect one (shadow paging) holds those of the guest table at G, which only whoever
built the guest's tables knows (`guest_span`). A table whose leaves all fall in a zapped page's span is
removed with it.

A large leaf replaced by a table linked below it is known by that link (`kvm_mmu_get_page`), and small
leaves replaced by a large one by the large one's setting. On a TDP host every
change of a TDP spte is reported too (`kvm_tdp_mmu_spte_changed`, by gfn and level), so write protection
and zaps are followed there. What no tracepoint reports cannot be shown (on a shadow host): an spte
write-protected (logging, GET_DIRTY_LOG) or dropped without its table (the collapsible-spte zap when
logging stops) keeps here the value it was set with. The statistics (`pages_4k`, `pages_2m`) are exact
where this is not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from live.tracefs import SpteChanged, SpteSet, TablePage, TraceStep

LEVEL_BITS = 9

# The bits a kernel spte's chips name, by the host MMU that built it (positions of 6.x's spte.h): a shadow
# spte is an x86 page-table entry with KVM's software bits (host-writable 9, MMU-writable 10, MMU-present
# 11: live-kernel.md §3 reads 0xee7 that way); an EPT spte has R W X, PS, A and D at 8 and 9, and the
# software bits at 57 and 58.
SPTE_BITS: dict[str, tuple[tuple[str, int], ...]] = {
    "shadow": (
        ("P", 1 << 0), ("W", 1 << 1), ("U", 1 << 2), ("PS", 1 << 7), ("A", 1 << 5), ("D", 1 << 6),
        ("HW", 1 << 9), ("MW", 1 << 10),
    ),
    "tdp": (
        ("R", 1 << 0), ("W", 1 << 1), ("X", 1 << 2), ("PS", 1 << 7), ("A", 1 << 8), ("D", 1 << 9),
        ("HW", 1 << 57), ("MW", 1 << 58),
    ),
}  # fmt: skip
WRITABLE = 1 << 1  # W is bit 1 in both
MMU_PRESENT = 1 << 11  # 6.x's SPTE_MMU_PRESENT_MASK: every present spte of either kind has it
DIRTY: dict[str, int] = {"shadow": 1 << 6, "tdp": 1 << 9}


def spte_bits(spte: int, host_mmu: Literal["tdp", "shadow"]) -> list[tuple[str, bool]]:
    """Each named bit of a kernel spte, set or not, in the order the chips show them."""
    return [(name, bool(spte & mask)) for name, mask in SPTE_BITS[host_mmu]]

# (first gfn, end gfn) of what an indirect shadow page maps: the guest table's span, or None if unknown.
GuestSpan = Callable[[TablePage], tuple[int, int] | None]


def direct_span(page: TablePage) -> tuple[int, int]:
    """What a direct table at `page.level` for `page.gfn` maps."""
    return page.gfn, page.gfn + (1 << (LEVEL_BITS * page.level))


@dataclass(slots=True)
class KernelTables:
    """The leaves the kernel set, by table address and index, as of the last step applied."""

    guest_span: GuestSpan = lambda page: None
    tables: dict[int, dict[int, SpteSet]] = field(default_factory=dict)

    def apply(self, step: TraceStep) -> None:
        """The step's zaps first (a table zapped in a step and filled again is drawn filled), then the
        large leaves its linked tables replaced, then its sptes in the order the kernel set them.

        A table a fault links at level L for gfn G (new, or one the kernel still had) goes where the
        entry one level up for G was: a large leaf there is gone (`drop_large_spte`, which fires no
        event of its own)."""
        for page in step.tables_zapped:
            span = self._span(page)
            if span is None:
                continue
            first, end = span
            for table, leaves in list(self.tables.items()):
                if leaves and all(
                    leaf.level == page.level and first <= leaf.gfn < end for leaf in leaves.values()
                ):
                    del self.tables[table]
        for page in step.tables_linked or step.tables_created:
            span = self._span(page)
            if span is None:
                continue
            self._linked_under(page.level + 1, span[0])
        for spte in step.sptes_set:
            if spte.level > 1:
                self._covered(spte)
            self.tables.setdefault(spte.table, {})[spte.index] = spte
        for change in step.sptes_changed:
            self._change(change)

    def _linked_under(self, level: int, gfn: int) -> None:
        """A table linked from the entry at `level` for `gfn`: the large leaf that entry held is gone."""
        self._drop(lambda leaf: leaf.level == level and leaf.gfn == gfn)

    def _covered(self, large: SpteSet) -> None:
        """A large leaf set for a region: the smaller leaves of that region are no longer reachable (the
        entry that pointed at their table is a leaf now), whatever dropped them without an event."""
        first = large.gfn
        end = first + (1 << (LEVEL_BITS * (large.level - 1)))
        self._drop(lambda leaf: leaf.level < large.level and first <= leaf.gfn < end)

    def _drop(self, gone: Callable[[SpteSet], bool]) -> None:
        """Remove every leaf `gone` says is no longer in the kernel's tables."""
        for leaves in self.tables.values():
            for index, leaf in list(leaves.items()):
                if gone(leaf):
                    del leaves[index]

    def _change(self, change: SpteChanged) -> None:
        """A TDP spte's new value, for the leaf set for its gfn at its level: write protection, the dirty
        bit, a zap (the new value not present: bit 11, MMU-present) are seen here on a TDP host."""
        for leaves in self.tables.values():
            for index, leaf in list(leaves.items()):
                if leaf.gfn == change.gfn and leaf.level == change.level:
                    if change.new & MMU_PRESENT:
                        leaves[index] = replace(leaf, spte=change.new)
                    else:
                        del leaves[index]
                    return

    def _span(self, page: TablePage) -> tuple[int, int] | None:
        return direct_span(page) if page.direct else self.guest_span(page)

    def leaves_per_level(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for leaves in self.tables.values():
            for leaf in leaves.values():
                counts[leaf.level] = counts.get(leaf.level, 0) + 1
        return dict(sorted(counts.items()))

    def leaf_for(self, gfn: int) -> SpteSet | None:
        """The leaf that maps `gfn` (a large one covers the gfns after its own), the lowest level first."""
        best: SpteSet | None = None
        for leaves in self.tables.values():
            for leaf in leaves.values():
                size = 1 << (LEVEL_BITS * (leaf.level - 1))
                if leaf.gfn <= gfn < leaf.gfn + size and (best is None or leaf.level < best.level):
                    best = leaf
        return best

    def to_json(self) -> list[dict[str, object]]:
        """The tables in address order, each with its leaves in index order."""
        return [
            {
                "table": f"{table:#x}",
                "level": min(leaf.level for leaf in leaves.values()),
                "leaves": [leaves[index].to_json() for index in sorted(leaves)],
            }
            for table, leaves in sorted(self.tables.items())
            if leaves
        ]
