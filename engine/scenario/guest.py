"""The guest's page tables of a shadow-paging scenario (`vm.mmu: "shadow"`): its address spaces, each a
list of mappings from guest-virtual ranges to gfns, and where in guest memory the tables live.

The tables are built here, before the VM runs, as a guest kernel would have built them: the PML4 of
each space first, then the tables each mapping needs, in the order the mappings are listed, on
consecutive gfns from `tables_at`. They sit in guest memory like any page, so KVM shadows them,
write-protects them and logs them like any page: that is the point of placing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import field_validator, model_validator

from engine.guest_pt import GuestPageTables, pt_index
from engine.scenario.fields import _MAX_NUMBER, PAGE_LEVELS, Number, PageSize, _Between, _Frozen
from engine.scenario.wording import fail, refuse
from engine.spte import (
    PAGE_SHIFT,
    PT64_NX_MASK,
    PT64_ROOT_LEVEL,
    PT_ACCESSED_MASK,
    PT_DIRTY_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
    pages_per_hpage,
)

if TYPE_CHECKING:
    from engine.scenario.models import Memslot

# Guest-virtual addresses a 4-level guest can use below the canonical hole: 2^47 bytes.
GVA_LIMIT = 1 << 47
MAX_SPACES = 8
MAX_MAPS = 256
# The table pages one scenario may make the guest build (a 4 GiB identity map by 4K pages needs 2 048).
MAX_GUEST_TABLES = 4096


class GuestMap(_Frozen):
    """`npages` 4K pages of guest-virtual memory from `gva` mapped to the gfns from `gfn`, by guest pages
    of size `page`, with these bits in every leaf PTE (the tables above are present, writable, user,
    and accessed when the leaves are)."""

    gfn: Annotated[Number, _Between(0, _MAX_NUMBER, hex=True)]
    gva: Annotated[Number, _Between(0, GVA_LIMIT - 1, hex=True)] | None = None
    npages: Annotated[Number, _Between(1, 1 << 20)] = 1
    page: PageSize = "4K"
    writable: bool = True
    user: bool = True
    accessed: bool = True
    dirty: bool = True
    nx: bool = False

    @property
    def level(self) -> int:
        return PAGE_LEVELS[self.page]

    @property
    def first_gva(self) -> int:
        """Where the mapping starts: `gva`, or the identity `gfn << 12`."""
        return self.gfn << PAGE_SHIFT if self.gva is None else self.gva

    @model_validator(mode="after")
    def _aligned(self) -> GuestMap:
        span = pages_per_hpage(self.level)
        if self.gfn % span or (self.first_gva >> PAGE_SHIFT) % span or self.npages % span:
            raise refuse(
                "guest_map_alignment",
                f"a {self.page} guest page needs gfn, gva and npages aligned to {span} pages",
            )
        if self.first_gva + (self.npages << PAGE_SHIFT) > GVA_LIMIT:
            raise refuse(
                "guest_map_range", f"the mapping goes past {GVA_LIMIT - 1:#x}, the last lower-half address"
            )
        return self

    def leaf_pte(self, gfn: int) -> int:
        """The guest PTE that maps `gfn` (the first of its page) with this mapping's bits."""
        pte = PT_PRESENT_MASK | (gfn << PAGE_SHIFT)
        if self.writable:
            pte |= PT_WRITABLE_MASK
        if self.user:
            pte |= PT_USER_MASK
        if self.accessed:
            pte |= PT_ACCESSED_MASK
        if self.dirty:
            pte |= PT_DIRTY_MASK
        if self.level > 1:
            pte |= PT_PAGE_SIZE_MASK
        if self.nx:
            pte |= PT64_NX_MASK
        return pte


class GuestSpace(_Frozen):
    """One address space: what one CR3 maps. Without `maps`, the identity map of every memslot, by 2M
    pages where a whole aligned 2M range lies in the slot and 4K pages elsewhere, every bit set."""

    maps: list[GuestMap] | None = None

    @field_validator("maps", mode="before")
    @classmethod
    def _count(cls, value: object) -> object:
        if isinstance(value, list | tuple) and len(value) > MAX_MAPS:
            raise refuse("guest_maps_count", f"must hold at most {MAX_MAPS} mappings, not {len(value)}")
        return value


class Guest(_Frozen):
    """The guest's paging: where its table pages go, CR0.WP and EFER.NX, and its address spaces (vCPUs
    start on space 0; `set_cr3` switches). With `paging` false the guest runs with paging off (real
    mode, a boot loader): KVM has no guest table to shadow and maps gfns directly (nonpaging_map), and
    the rest is not given."""

    paging: bool = True
    tables_at: Annotated[Number, _Between(0, _MAX_NUMBER, hex=True)] | None = None
    cr0_wp: bool = True
    efer_nx: bool = True
    spaces: list[GuestSpace] = [GuestSpace()]  # noqa: RUF012 (a pydantic field)

    @field_validator("spaces", mode="before")
    @classmethod
    def _space_count(cls, value: object) -> object:
        if isinstance(value, list | tuple) and not 1 <= len(value) <= MAX_SPACES:
            raise refuse(
                "guest_spaces_count", f"must hold between 1 and {MAX_SPACES} spaces, not {len(value)}"
            )
        return value

    def canonical(self) -> dict[str, object]:
        """Every field with its default filled in; for a guest with paging off, only that."""
        if not self.paging:
            return {"paging": False}
        return self.model_dump(mode="python")

    @model_validator(mode="after")
    def _tables_placed(self) -> Guest:
        if self.paging and self.tables_at is None:
            raise refuse(
                "guest_tables_at", "a guest with paging on needs tables_at, where its page tables go"
            )
        if not self.paging and (self.tables_at is not None or "spaces" in self.model_fields_set):
            raise refuse("guest_paging_off", "a guest with paging off has no page tables: give neither"
                         " tables_at nor spaces")
        return self


def identity_maps(memslots: list[Memslot]) -> list[GuestMap]:
    """Every memslot mapped at gva = gfn << 12: 2M guest pages over whole aligned 2M ranges, 4K pages
    around them."""
    span = pages_per_hpage(2)
    maps: list[GuestMap] = []
    for slot in sorted(memslots, key=lambda s: s.base_gfn):
        gfn, end = slot.base_gfn, slot.end_gfn
        while gfn < end:
            if gfn % span == 0 and gfn + span <= end:
                run = (end - gfn) // span * span
                maps.append(GuestMap(gfn=gfn, npages=run, page="2M"))
            else:
                run = min(end, (gfn // span + 1) * span) - gfn
                maps.append(GuestMap(gfn=gfn, npages=run))
            gfn += run
    return maps


@dataclass(slots=True)
class BuiltGuest:
    """The guest's tables as built: their contents, each space's CR3 (its PML4's gfn), and every table
    page in the order it was placed."""

    tables: GuestPageTables
    cr3s: list[int]
    table_gfns: list[int]


_TABLE_BITS = PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK


def build_guest(guest: Guest, memslots: list[Memslot]) -> BuiltGuest:
    """Lay the guest's tables out from `tables_at`, mapping by mapping. A mapping over a range another
    already mapped in the same space, or tables that would leave the memslots, are refused."""
    tables = GuestPageTables()
    built = BuiltGuest(tables, [], [])
    if not guest.paging or guest.tables_at is None:
        return built
    tables_at = guest.tables_at

    def place() -> int:
        gfn = tables_at + len(built.table_gfns)
        if len(built.table_gfns) >= MAX_GUEST_TABLES:
            raise fail(
                "guest.tables_at", f"the guest's mappings need more than {MAX_GUEST_TABLES} page tables"
            )
        if not any(slot.base_gfn <= gfn < slot.end_gfn for slot in memslots):
            raise fail(
                "guest.tables_at",
                f"the guest's page table number {len(built.table_gfns) + 1} would sit at gfn {gfn:#x},"
                " outside every memslot: the tables must live in guest memory",
            )
        built.table_gfns.append(gfn)
        tables.tables[gfn] = [0] * 512
        return gfn

    for number, space in enumerate(guest.spaces):
        root = place()
        built.cr3s.append(root)
        maps = space.maps if space.maps is not None else identity_maps(memslots)
        for position, mapping in enumerate(maps):
            at = f"guest.spaces[{number}].maps[{position}]"
            span = pages_per_hpage(mapping.level)
            for k in range(0, mapping.npages, span):
                gva = mapping.first_gva + (k << PAGE_SHIFT)
                table = root
                for level in range(PT64_ROOT_LEVEL, mapping.level, -1):
                    index = pt_index(gva, level)
                    entry = tables.tables[table][index]
                    if entry & PT_PRESENT_MASK and entry & PT_PAGE_SIZE_MASK:
                        raise fail(at, f"gva {gva:#x} is already mapped by a larger page of this space")
                    if not entry & PT_PRESENT_MASK:
                        child = place()
                        entry = (child << PAGE_SHIFT) | _TABLE_BITS
                        if mapping.accessed:
                            entry |= PT_ACCESSED_MASK
                        tables.tables[table][index] = entry
                    table = (entry >> PAGE_SHIFT) & ((1 << 40) - 1)
                index = pt_index(gva, mapping.level)
                if tables.tables[table][index] & PT_PRESENT_MASK:
                    raise fail(at, f"gva {gva:#x} is already mapped in this space")
                tables.tables[table][index] = mapping.leaf_pte(mapping.gfn + k)
    return built
