"""The native guest's own page tables: every gfn of the scenario's slots mapped to itself.

A guest whose code runs with paging off is emulated instruction by instruction on a shadow-MMU host
(spec live-kernel.md §2), so the live VM gives its guest 4-level page tables in guest memory and runs it
in 64-bit mode, where its loads and stores go through the kernel's MMU. The tables are what a small
guest kernel would build:

- the identity map (virtual address = guest-physical address), so that the access program of
  `live.guest_code` names a gfn exactly as the scenario does;
- a 2M page (a PDE with PS) for every 2 MiB-aligned block a slot holds whole when the slot's host pages
  are 2M or larger, and 4K pages (PTEs) everywhere else, so that a large spte can exist exactly where
  the model may build one;
- U/S set in every entry, which the host's native path needs (a supervisor-only entry makes the kernel
  build an spte the hardware walk refuses, and the guest livelocks on spurious faults), and R/W set;
- A and D clear, as an OS hands out fresh tables: the kernel's guest walker sets them on the first
  access and the first write, as it would for any guest.

The tables live in the VM's system slot (below the reserved window, beside the code page), which is
itself mapped with 4K pages; nothing in a scenario's slots changes. 1G guest pages are never used: the
host backs guest memory with transparent 2M pages at most.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

PAGE_SHIFT = 12
ENTRIES = 512
LEVEL_BITS = 9
HUGE_PAGES = 1 << LEVEL_BITS  # 4K pages in a 2M page

# Guest paging-entry bits (x86 4-level paging).
PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_USER = 1 << 2
PTE_ACCESSED = 1 << 5
PTE_DIRTY = 1 << 6
PTE_LARGE = 1 << 7
_TABLE_BITS = PTE_PRESENT | PTE_WRITABLE | PTE_USER


@dataclass(frozen=True, slots=True)
class MappedRange:
    """A run of guest frames to map to themselves; `huge` allows 2M pages where alignment does too."""

    base_gfn: int
    npages: int
    huge: bool


@dataclass(frozen=True, slots=True)
class GuestPageTables:
    """The tables, placed at `base_gfn` and on: `pages[i]` is the 4 KiB content of gfn `base_gfn + i`;
    `pages[0]` is the PML4 (CR3). `large` and `small` are the 2M and 4K pages mapped."""

    base_gfn: int
    pages: tuple[bytes, ...]
    large: int
    small: int
    spans: dict[int, tuple[int, int, int]]  # table gfn -> (level, first gfn, end gfn) it maps

    def span(self, gfn: int, level: int) -> tuple[int, int] | None:
        """What the guest table at `gfn` maps, if it is one of these tables and at `level`: the span of a
        shadow page that shadows it (`live.kernel_tables`)."""
        found = self.spans.get(gfn)
        return (found[1], found[2]) if found is not None and found[0] == level else None

    @property
    def cr3(self) -> int:
        return self.base_gfn << PAGE_SHIFT


class _Builder:
    """Tables keyed by (level, the virtual-address prefix above them), numbered in the order created."""

    def __init__(self) -> None:
        self.order: list[tuple[int, int]] = [(4, 0)]
        self.entries: dict[tuple[int, int], dict[int, tuple[int, int | tuple[int, int]]]] = {(4, 0): {}}
        self.large = 0
        self.small = 0

    def _table(self, level: int, gfn: int) -> tuple[int, int]:
        """The table at `level` on the walk to `gfn`, created (and linked from its parent) if new."""
        key = (level, gfn >> (LEVEL_BITS * level))
        if key not in self.entries:
            parent = self._table(level + 1, gfn)
            self.entries[key] = {}
            self.order.append(key)
            self.entries[parent][(gfn >> (LEVEL_BITS * level)) & (ENTRIES - 1)] = (_TABLE_BITS, key)
        return key

    def map_4k(self, gfn: int) -> None:
        self.entries[self._table(1, gfn)][gfn & (ENTRIES - 1)] = (_TABLE_BITS, gfn)
        self.small += 1

    def map_2m(self, gfn: int) -> None:
        index = (gfn >> LEVEL_BITS) & (ENTRIES - 1)
        self.entries[self._table(2, gfn)][index] = (_TABLE_BITS | PTE_LARGE, gfn)
        self.large += 1

    def map(self, mapped: MappedRange) -> None:
        gfn, end = mapped.base_gfn, mapped.base_gfn + mapped.npages
        while gfn < end:
            if mapped.huge and gfn % HUGE_PAGES == 0 and gfn + HUGE_PAGES <= end:
                self.map_2m(gfn)
                gfn += HUGE_PAGES
            else:
                self.map_4k(gfn)
                gfn += 1

    def place(self, base_gfn: int) -> GuestPageTables:
        number = {key: base_gfn + position for position, key in enumerate(self.order)}
        pages = []
        for key in self.order:
            page = bytearray(ENTRIES * 8)
            for index, (bits, target) in self.entries[key].items():
                frame = number[target] if isinstance(target, tuple) else target
                struct.pack_into("<Q", page, index * 8, frame << PAGE_SHIFT | bits)
            pages.append(bytes(page))
        spans = {
            number[key]: (key[0], key[1] << (LEVEL_BITS * key[0]), (key[1] + 1) << (LEVEL_BITS * key[0]))
            for key in self.order
        }
        return GuestPageTables(base_gfn, tuple(pages), self.large, self.small, spans)


def table_pages(ranges: Iterable[MappedRange]) -> int:
    """How many table pages `identity_map` builds for these ranges (to size the system slot first)."""
    builder = _Builder()
    for mapped in ranges:
        builder.map(mapped)
    return len(builder.order)


def identity_map(ranges: Iterable[MappedRange], base_gfn: int) -> GuestPageTables:
    """4-level tables mapping every gfn of `ranges` to itself, the table pages placed from `base_gfn` on."""
    builder = _Builder()
    for mapped in ranges:
        builder.map(mapped)
    return builder.place(base_gfn)
