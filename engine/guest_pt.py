"""The guest's own page tables and the walk KVM makes through them: paging_tmpl.h's guest walker.

Under EPT the guest's page tables are invisible to KVM: the CPU walks them. Under shadow paging KVM
must walk them itself, in software, on every fault (FNAME(walk_addr_generic)), to learn which gfn a
guest-virtual address maps to and with which rights, before it can build a shadow spte for it. The walk
is also a writer of guest memory: the CPU would set the Accessed and Dirty bits of the guest PTEs it
uses, and KVM must do the same for the guest to see them (FNAME(update_accessed_dirty_bits)). Those
stores land in the guest's page-table pages, so those pages are marked dirty like any store: this is
why page-table pages show up in dirty logs under shadow paging (shadow-mmu.md §3).

Only x86 4-level paging (64-bit long mode with PAE) is modelled: the 64-bit PTTYPE of paging_tmpl.h with
a root level of 4. Not modelled: reserved bits (a PTE with a reserved bit set would fault with the RSVD
error-code bit; here every bit outside the named ones is ignored, including PS in a PML4E, which is
reserved and is read as "not a leaf"), SMEP/SMAP, protection keys, PAT/PWT/PCD (caching only),
the global bit, nested paging (translate_gpa is the identity) and read-only memslots (A/D stores to a
table in a read-only slot, which the kernel skips, cannot arise: the model has no KVM_MEM_READONLY).

The shadow MMU (engine.paging_tmpl) walks with it on every fault of a VM whose `mmu` is `shadow`.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.kvm import Kvm, store_landed
from engine.kvm_main import mark_page_dirty
from engine.shadow_page import ACC_ALL, ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK

__all__ = ["ACC_ALL", "ACC_EXEC_MASK", "ACC_USER_MASK", "ACC_WRITE_MASK"]  # the walk's rights, re-exported
from engine.spte import (
    PAGE_SHIFT,
    PT64_BASE_ADDR_MASK,
    PT64_ENT_PER_PAGE,
    PT64_LEVEL_BITS,
    PT64_NX_MASK,
    PT64_ROOT_LEVEL,
    PT_ACCESSED_MASK,
    PT_DIRECTORY_LEVEL,
    PT_DIRTY_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PDPE_LEVEL,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
)

# --- Guest PTE bits of x86 4-level paging (Intel SDM vol. 3, "4-level paging"). An spte of the shadow
# MMU is the same format, so the kernel's mmu.h names serve both: the shared ones come from engine.spte.
# Page-level write-through and cache-disable: caching attributes only, ignored by the walk.
PT_PWT_MASK = 1 << 3
PT_PCD_MASK = 1 << 4
# PS (engine.spte's PT_PAGE_SIZE_MASK): in a PDE a 2 MiB leaf, in a PDPTE a 1 GiB leaf (bit 7 is PAT in a
# 4K PTE, and reserved in a PML4E).
PT64_NX_SHIFT = 63

# The access rights the walk accumulates are mmu.h's ACC_* (engine.shadow_page): W and U sit where the
# PTE has them.

# --- The #PF error code (PFERR_*): what the guest is told when its own walk fails. ---
PFERR_PRESENT_MASK = 1 << 0
PFERR_WRITE_MASK = 1 << 1
PFERR_USER_MASK = 1 << 2
PFERR_RSVD_MASK = 1 << 3  # never set here: reserved bits are not modelled
PFERR_FETCH_MASK = 1 << 4

# The caller mark_page_dirty names for the walker's A/D stores.
UPDATE_ACCESSED_DIRTY_BITS = "update_accessed_dirty_bits"


def pt_index(gva: int, level: int) -> int:
    """The index into the level's table that the address selects (PT_INDEX): 9 bits per level."""
    return (gva >> (PAGE_SHIFT + PT64_LEVEL_BITS * (level - 1))) & (PT64_ENT_PER_PAGE - 1)


def gpte_to_gfn_lvl(gpte: int, level: int) -> int:
    """The first gfn a PTE at `level` points to: a table's gfn, or a (large) page's first gfn.

    For a large leaf the address bits below the page size are not part of the address (bit 12 of a PS
    PDE is PAT), so they are masked off as PT_LVL_ADDR_MASK does."""
    low = PAGE_SHIFT + PT64_LEVEL_BITS * (level - 1)
    return (gpte & PT64_BASE_ADDR_MASK & ~((1 << low) - 1)) >> PAGE_SHIFT


def is_present_gpte(gpte: int) -> bool:
    return bool(gpte & PT_PRESENT_MASK)


def is_last_gpte(level: int, gpte: int) -> bool:
    """Whether the walk stops at this PTE: always at level 1; at levels 2 and 3 when PS is set.

    4-level paging supports 1 GiB pages where the CPU does, which the model assumes; a PS bit in a
    PML4E is reserved (not modelled) and does not end the walk."""
    if level == PT_PAGE_TABLE_LEVEL:
        return True
    return level in (PT_DIRECTORY_LEVEL, PT_PDPE_LEVEL) and bool(gpte & PT_PAGE_SIZE_MASK)


def gpte_access(gpte: int, efer_nx: bool) -> int:
    """The rights one PTE grants: its W and U bits, and X unless NX is set (and EFER.NX makes it count).

    Without EFER.NX bit 63 is reserved; since reserved bits are not modelled it is ignored and every
    page is executable, as the CPU treats a fetch when NX is off."""
    access = (gpte & (PT_WRITABLE_MASK | PT_USER_MASK)) | ACC_EXEC_MASK
    if efer_nx and gpte & PT64_NX_MASK:
        access &= ~ACC_EXEC_MASK
    return access


def protect_clean_gpte(access: int, gpte: int) -> int:
    """`access` without W when the guest leaf PTE is not dirty.

    A read fault through a clean guest PTE must give a read-only spte: were it writable, the guest's
    first write would go through without KVM seeing it, and KVM could not set D in the guest PTE as the
    CPU would. The write then faults, sets D and gets a writable spte (shadow-mmu.md §3)."""
    if gpte & PT_DIRTY_MASK:
        return access
    return access & ~ACC_WRITE_MASK


class GuestPageTables:
    """The guest's page-table pages, as they sit in guest memory: table gfn -> its 512 PTEs.

    A plain value holder: a page that was never written reads as all zeroes (every entry not present).
    Dirty marking and content counters of the pages are not kept here but by the functions that store
    through the Kvm (`store_gpte`), because guest memory's bookkeeping lives in the memslots."""

    __slots__ = ("backed", "tables")

    def __init__(self) -> None:
        self.tables: dict[int, list[int]] = {}
        # Whether a table's gfn lies in a memslot, asked once per table: the model's memslots never move.
        self.backed: dict[int, bool] = {}

    def read_gpte(self, gfn: int, index: int) -> int:
        table = self.tables.get(gfn)
        return 0 if table is None else table[index]

    def write_gpte(self, gfn: int, index: int, value: int) -> None:
        """A guest store to the PTE at `index` of the table at `gfn` (the table created on first write)."""
        if not 0 <= index < PT64_ENT_PER_PAGE:
            raise ValueError(f"PTE index {index} is outside a table of {PT64_ENT_PER_PAGE} entries")
        if not 0 <= value < 1 << 64:
            raise ValueError(f"guest PTE {value:#x} is not a 64-bit value")
        table = self.tables.get(gfn)
        if table is None:
            table = self.tables[gfn] = [0] * PT64_ENT_PER_PAGE
        table[index] = value


@dataclass(frozen=True, slots=True)
class GuestPaging:
    """A vCPU's paging state as the walk reads it: CR3 (the PML4's gfn), CR0.WP, EFER.NX.

    Only 4-level long-mode paging is modelled (CR0.PG, CR4.PAE and EFER.LMA all set): 2- and 3-level
    paging (the 32-bit PTTYPE, PAE's PDPTRs) and paging off take other walks, so they are refused
    rather than walked wrongly."""

    cr3: int
    cr0_wp: bool = True
    efer_nx: bool = True
    cr0_pg: bool = True
    cr4_pae: bool = True
    efer_lma: bool = True

    def __post_init__(self) -> None:
        if not self.cr0_pg:
            raise ValueError("guest paging is off (CR0.PG=0): only 4-level long-mode paging is modelled")
        if not self.cr4_pae:
            raise ValueError("32-bit paging (CR4.PAE=0): only 4-level long-mode paging is modelled")
        if not self.efer_lma:
            raise ValueError("PAE paging outside long mode (EFER.LMA=0): only 4-level paging is modelled")
        if self.cr3 < 0:
            raise ValueError(f"CR3 gfn {self.cr3:#x} is negative")


@dataclass(frozen=True, slots=True)
class AdUpdate:
    """One A/D store the walk made into a guest PTE: where, and the PTE before and after."""

    level: int
    table_gfn: int
    index: int
    old: int
    new: int


class GuestWalker:
    """`struct guest_walker`: what one walk found, indexed by level - 1 as the kernel's arrays are.

    On success `gfn` is the page the address maps to and `fault` is None; on failure `fault` holds the
    #PF error code to inject and `level` is where the walk stopped. A plain class with slots: every
    fault of a shadow MMU builds one."""

    __slots__ = (
        "ad_updates",
        "fault",
        "gfn",
        "gva",
        "index",
        "level",
        "max_level",
        "pt_access",
        "pte_access",
        "ptes",
        "table_gfn",
    )

    def __init__(self, gva: int) -> None:
        self.gva = gva
        self.level = PT64_ROOT_LEVEL
        self.max_level = PT64_ROOT_LEVEL
        self.table_gfn = [0, 0, 0, 0]
        self.index = [0, 0, 0, 0]
        self.ptes = [0, 0, 0, 0]
        self.pt_access = ACC_ALL
        self.pte_access = ACC_ALL
        self.gfn: int | None = None
        self.fault: int | None = None
        # The A/D stores made by update_accessed_dirty_bits, top level first.
        self.ad_updates: list[AdUpdate] = []

    @property
    def ok(self) -> bool:
        return self.fault is None


def permission_fault(pte_access: int, paging: GuestPaging, *, write: bool, user: bool, fetch: bool) -> bool:
    """Whether the accumulated rights forbid the access (mmu.h's permission_fault, without SMEP/SMAP/PKU).

    A write needs W, except a supervisor write with CR0.WP=0, which the CPU lets through read-only pages;
    a user access needs U; a fetch needs X, which only EFER.NX can take away."""
    writable = bool(pte_access & ACC_WRITE_MASK) or (not paging.cr0_wp and not user)
    if write and not writable:
        return True
    if user and not pte_access & ACC_USER_MASK:
        return True
    return fetch and paging.efer_nx and not pte_access & ACC_EXEC_MASK


def store_gpte(
    kvm: Kvm, tables: GuestPageTables, table_gfn: int, index: int, value: int, caller: str
) -> None:
    """KVM's store of a guest PTE into guest memory: the table changes, and its page is a page written.

    It is marked dirty (so a logged slot reports it) and its content counter bumped, in that order, as
    the emulator's stores do (engine.emulate): the mark comes first so the store never lands unlogged."""
    tables.write_gpte(table_gfn, index, value)
    slot = kvm.gfn_to_memslot(table_gfn)
    if slot is not None:
        mark_page_dirty(kvm, table_gfn, caller)
        store_landed(kvm.log, slot, table_gfn)


def update_accessed_dirty_bits(kvm: Kvm, tables: GuestPageTables, walker: GuestWalker, write: bool) -> None:
    """Set A in every PTE the walk used that lacks it, and D in the leaf on a write, as the CPU would.

    From the root down; a PTE already holding what it needs is not stored (no dirty mark), so a walk
    through tables whose A/D bits are all set writes nothing. Every store marks its table page dirty."""
    for level in range(walker.max_level, walker.level - 1, -1):
        old = walker.ptes[level - 1]
        new = old | PT_ACCESSED_MASK
        if level == walker.level and write:
            new |= PT_DIRTY_MASK
        if new == old:
            continue
        table_gfn = walker.table_gfn[level - 1]
        index = walker.index[level - 1]
        store_gpte(kvm, tables, table_gfn, index, new, UPDATE_ACCESSED_DIRTY_BITS)
        walker.ptes[level - 1] = new
        walker.ad_updates.append(AdUpdate(level, table_gfn, index, old, new))


def _fault(
    walker: GuestWalker, paging: GuestPaging, present: bool, *, write: bool, user: bool, fetch: bool
) -> GuestWalker:
    """Fill in the error code of a failed walk: P says whether a present PTE denied it, W/U say what the
    access was, and the fetch bit is reported only when NX is on (otherwise the CPU cannot tell)."""
    code = PFERR_PRESENT_MASK if present else 0
    if write:
        code |= PFERR_WRITE_MASK
    if user:
        code |= PFERR_USER_MASK
    if fetch and paging.efer_nx:
        code |= PFERR_FETCH_MASK
    walker.fault = code
    return walker


def walk_addr_generic(
    kvm: Kvm,
    tables: GuestPageTables,
    paging: GuestPaging,
    gva: int,
    *,
    write: bool = False,
    user: bool = False,
    fetch: bool = False,
) -> GuestWalker:
    """Walk the guest's tables for `gva` as the CPU would, and set A/D on success (FNAME(walk_addr_generic)).

    Rights are ANDed down the levels: `pt_access` is what the tables above the leaf allow, `pte_access`
    that and the leaf (3.x's pair; 6.x keeps `pt_access` per level, whose leaf entry is this one). A walk
    fails with P=0 at a non-present PTE or a table outside every memslot, and with P=1 when the rights
    deny the access; a failed walk stores nothing, since the CPU sets A/D only on a translation it uses.
    The mark of the A/D stores goes to `kvm.running_vcpu`'s ring under the dirty ring, as any guest
    access's, so a caller running a vCPU's access sets it as the fault path does."""
    if write and fetch:
        raise ValueError("an access is a write or a fetch, not both")
    if not 0 <= gva < 1 << 64:
        raise ValueError(f"guest-virtual address {gva:#x} is not a 64-bit value")
    sign = gva >> 47
    if sign not in (0, (1 << 17) - 1):
        # A non-canonical address raises #GP before any walk: it has no #PF to model.
        raise ValueError(f"guest-virtual address {gva:#x} is not canonical")
    walker = GuestWalker(gva)
    table_gfns, indexes, ptes = walker.table_gfn, walker.index, walker.ptes
    pt_access = pte_access = ACC_ALL
    table_gfn = paging.cr3
    level = PT64_ROOT_LEVEL + 1
    known = tables.tables
    backed_tables = tables.backed
    efer_nx = paging.efer_nx
    unset_ad = False  # whether some PTE the walk uses lacks A (or the leaf D, for a write)
    # Every fault of a shadow MMU walks: the loop is written with locals and raw bit tests.
    while True:
        pt_access &= pte_access
        level -= 1
        index = (gva >> (PAGE_SHIFT + PT64_LEVEL_BITS * (level - 1))) & (PT64_ENT_PER_PAGE - 1)
        table_gfns[level - 1] = table_gfn
        indexes[level - 1] = index
        table = known.get(table_gfn)
        if table is not None:
            backed = backed_tables.get(table_gfn)
            if backed is None:
                backed = backed_tables[table_gfn] = kvm.gfn_to_memslot(table_gfn) is not None
            if not backed:
                table = None
        # No memory behind the table (kvm_is_error_hva) or a page never written: nothing present there.
        pte = table[index] if table is not None else 0
        ptes[level - 1] = pte
        if not pte & PT_PRESENT_MASK:
            walker.level = level
            return _fault(walker, paging, False, write=write, user=user, fetch=fetch)
        unset_ad |= not pte & PT_ACCESSED_MASK
        access = (pte & (PT_WRITABLE_MASK | PT_USER_MASK)) | ACC_EXEC_MASK
        if efer_nx and pte & PT64_NX_MASK:
            access &= ~ACC_EXEC_MASK
        pte_access = pt_access & access
        if level == PT_PAGE_TABLE_LEVEL or (level <= PT_PDPE_LEVEL and pte & PT_PAGE_SIZE_MASK):
            break
        table_gfn = (pte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT
    walker.level = level
    walker.pt_access = pt_access
    walker.pte_access = pte_access
    if permission_fault(pte_access, paging, write=write, user=user, fetch=fetch):
        return _fault(walker, paging, True, write=write, user=user, fetch=fetch)
    offset_mask = (1 << (PT64_LEVEL_BITS * (level - 1))) - 1
    first_gfn = (pte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT & ~offset_mask  # gpte_to_gfn_lvl
    walker.gfn = first_gfn + ((gva >> PAGE_SHIFT) & offset_mask)
    if not write:
        walker.pte_access = protect_clean_gpte(pte_access, pte)
    elif not pte & PT_DIRTY_MASK:
        unset_ad = True
    if unset_ad:
        update_accessed_dirty_bits(kvm, tables, walker, write)
    return walker
