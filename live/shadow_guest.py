"""The live guest of a shadow-paging scenario (`vm.mmu: "shadow"`): the scenario's own page tables in its
own memory, and the few entries the live VM's code needs beside them.

Under shadow paging KVM shadows, write-protects and logs the guest's page-table pages, so the live
guest must run on exactly the tables the model walks: the same table gfns (laid out from
`guest.tables_at` by `engine.scenario.guest.build_guest`), the same entries and bits, one PML4 per
address space. What the live VM adds is kept out of the scenario's sight:

- its system slot (the code page, the PVM page and the tables that map them) lies outside every
  scenario slot, so nothing of it is ever logged, and its sptes are told apart by their gfns;
- it is mapped at virtual address `SYSTEM_PML4_INDEX << 39` plus its guest-physical address, through
  entry `system_index` of every space's PML4 (an index no space uses), whose lower tables all live in
  the system slot;
- every entry on that path has A and D set already, so the kernel's walk of the code's fetches never
  stores into a guest table (a store into the PML4, a scenario page, would log it).

The one entry added to each PML4 is the only change to a scenario page: the model's PML4 has nothing at
that index, and no access of the scenario goes through it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from engine.scenario import Scenario
from engine.scenario.guest import BuiltGuest
from live.paging import PTE_ACCESSED, PTE_DIRTY, PTE_PRESENT, MappedRange, identity_map

PAGE_SHIFT = 12
ENTRIES = 512
PML4_SHIFT = 39

# What the system slot holds before its tables: the code page and the PVM page (live.vm).
SYSTEM_FIXED_PAGES = 2


def refusal(scenario: Scenario) -> str | None:
    """Why the live backend cannot run this shadow-paging scenario natively, or None."""
    guest = scenario.guest
    if guest is None:
        return None
    if not guest.paging:
        return (
            "a guest with paging off is emulated instruction by instruction on this host (kvm_pvm):"
            " its accesses would not reach the shadow MMU"
        )
    if not guest.cr0_wp or not guest.efer_nx:
        return (
            "the live guest runs with CR0.WP and EFER.NX set (its code needs them); the scenario clears"
            " one"
        )
    for position, slot in enumerate(scenario.memslots):
        if not slot.host_writable:
            return (
                f"memslots[{position}] (slot {slot.id}) is not host-writable: under shadow paging that"
                " decides which reads are logged, and the live backend cannot make the host map a page"
                " read-only"
            )
    built = scenario.built_guest()
    if built is not None and free_pml4_index(built) is None:
        return "every PML4 index below 256 is used by some address space: none is left for the live VM's code"
    return None


def free_pml4_index(built: BuiltGuest) -> int | None:
    """The highest lower-half PML4 index no space's PML4 uses, or None."""
    for index in range(ENTRIES // 2 - 1, -1, -1):
        if all(built.tables.tables[cr3][index] == 0 for cr3 in built.cr3s):
            return index
    return None


@dataclass(frozen=True, slots=True)
class ShadowLayout:
    """Where everything of a shadow-paging guest goes.

    `scenario_pages`: the content of every guest table page (gfn -> 4 KiB), each PML4 with the system
    entry added. `system_pages`: the system slot's pages from its base (code, PVM page, then its tables).
    `cr3s`: each space's PML4 address. `code_va`: the virtual address of the code page.
    """

    scenario_pages: dict[int, bytes]
    system_base: int
    system_pages: tuple[bytes, ...]
    system_index: int
    cr3s: tuple[int, ...]

    @property
    def code_va(self) -> int:
        return (self.system_index << PML4_SHIFT) | (self.system_base << PAGE_SHIFT)

    def system_gfns(self) -> range:
        return range(self.system_base, self.system_base + len(self.system_pages))


# The system slot's pages: the fixed pages and the tables mapping the slot itself (a PML4 the layout
# does not use, a PDPT, a page directory, and one or two page tables: the slot may cross a 2 MiB line).
SYSTEM_PAGES = SYSTEM_FIXED_PAGES + 5


def _with_ad(page: bytes) -> bytes:
    """Every present entry of a table page with A and D set (D is ignored above a leaf)."""
    out = bytearray(page)
    for index in range(ENTRIES):
        (entry,) = struct.unpack_from("<Q", out, index * 8)
        if entry & PTE_PRESENT:
            struct.pack_into("<Q", out, index * 8, entry | PTE_ACCESSED | PTE_DIRTY)
    return bytes(out)


def layout(built: BuiltGuest, system_base: int) -> ShadowLayout:
    """The scenario's tables with the system entry in each PML4, and the system slot at `system_base`."""
    index = free_pml4_index(built)
    if index is None:
        raise ValueError("no PML4 index is free for the live VM's code")
    npages = SYSTEM_PAGES
    tables = identity_map([MappedRange(system_base, npages, False)], system_base + SYSTEM_FIXED_PAGES)
    if SYSTEM_FIXED_PAGES + len(tables.pages) > npages:
        raise AssertionError("the system slot is too small for the tables that map it")
    own = [_with_ad(page) for page in tables.pages]
    # Entry 0 of the system's own PML4 (gpa < 512 GiB) points at its PDPT: that entry goes into every
    # space's PML4 at `index`; the system's own PML4 page stays unused.
    (system_entry,) = struct.unpack_from("<Q", own[0], 0)
    scenario_pages: dict[int, bytes] = {}
    for gfn, entries in built.tables.tables.items():
        page = bytearray(struct.pack(f"<{ENTRIES}Q", *entries))
        if gfn in built.cr3s:
            struct.pack_into("<Q", page, index * 8, system_entry)
        scenario_pages[gfn] = bytes(page)
    fixed = [bytes(ENTRIES * 8)] * SYSTEM_FIXED_PAGES
    padding = [bytes(ENTRIES * 8)] * (npages - SYSTEM_FIXED_PAGES - len(own))
    return ShadowLayout(
        scenario_pages=scenario_pages,
        system_base=system_base,
        system_pages=tuple(fixed + own + padding),
        system_index=index,
        cr3s=tuple(cr3 << PAGE_SHIFT for cr3 in built.cr3s),
    )
