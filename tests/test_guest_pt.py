"""The guest's page tables and KVM's walk through them (`engine.guest_pt`, paging_tmpl.h's guest walker).

Expectations come from x86 4-level paging (PTE bits at their architectural positions, 9 index bits per
level, PS leaves at the PDE and PDPTE, #PF error code P=1 W=2 U=4 I/D=16) and from shadow-mmu.md §3:
the walk sets A on every level it used and D on the leaf of a write, each such store marks its
page-table page dirty, a failed walk stores nothing, and a read through a clean leaf loses W.
The tables are built by hand at explicit indices, not through the module's own index helpers.
"""

from __future__ import annotations

import pytest
from conftest import make_scenario

from engine.guest_pt import (
    ACC_EXEC_MASK,
    ACC_USER_MASK,
    ACC_WRITE_MASK,
    GuestPageTables,
    GuestPaging,
    protect_clean_gpte,
    walk_addr_generic,
)
from engine.kvm import Kvm
from engine.policy import make_policy
from engine.simulation import Simulation

P, RW, US, PWT, PCD, A, D, PS = 1, 2, 4, 8, 16, 0x20, 0x40, 0x80
NX = 1 << 63
PF_P, PF_W, PF_U, PF_F = 1, 2, 4, 16

# One slot at gfn 0x200..0x3ff; the tables live in it: PML4 0x201, PDPT 0x202, PD 0x203, PT 0x204.
SLOT = {"id": 1, "base_gfn": "0x200", "npages": 512, "host_page": "4K", "base_pfn": "0x80000"}
PML4, PDPT, PD, PT = 0x201, 0x202, 0x203, 0x204
TABLE = P | RW | US  # an upper-level entry granting everything, A clear


def kvm_with(logging: bool = True, mode: str = "bitmap") -> Kvm:
    """A VM with the example slot, dirty-logged unless `logging` is False."""
    steps = [{"op": "enable_dirty_log", "slot": 1}] if logging else [{"op": "read", "gfn": "0x3ff"}]
    sim = Simulation(make_scenario([SLOT], steps), make_policy("lazy", {"dirty_log_mode": mode}))
    sim.step()
    return sim.kvm


def dirty_gfns(kvm: Kvm) -> set[int]:
    slot = kvm.memslots.by_id[1]
    bitmap = slot.dirty_bitmap
    assert bitmap is not None
    return {slot.base_gfn + i for i in range(slot.npages) if bitmap[i >> 3] >> (i & 7) & 1}


def chain(tables: GuestPageTables, i4: int, i3: int, i2: int, i1: int, leaf: int, upper: int = TABLE) -> None:
    """PML4[i4] -> PDPT, PDPT[i3] -> PD, PD[i2] -> PT, PT[i1] = leaf."""
    tables.write_gpte(PML4, i4, (PDPT << 12) | upper)
    tables.write_gpte(PDPT, i3, (PD << 12) | upper)
    tables.write_gpte(PD, i2, (PT << 12) | upper)
    tables.write_gpte(PT, i1, leaf)


def gva_of(i4: int, i3: int, i2: int, i1: int, offset: int = 0) -> int:
    return (i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12) | offset


PAGING = GuestPaging(cr3=PML4)


def test_identity_4k_map() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    # gva 0x3050a8 = PML4 0, PDPT 0, PD 1, PT 0x105: mapped to gfn 0x305.
    chain(tables, 0, 0, 1, 0x105, (0x305 << 12) | P | RW | US)
    walker = walk_addr_generic(kvm, tables, PAGING, 0x3050A8)
    assert walker.fault is None and walker.ok
    assert walker.gfn == 0x305
    assert walker.level == 1
    assert walker.table_gfn == [PT, PD, PDPT, PML4]


def test_non_identity_4k_map_with_high_indices() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0x0F3, 0x105, 0x1FF, 0x009, (0x3AB << 12) | P | RW | US | A | D)
    walker = walk_addr_generic(kvm, tables, PAGING, gva_of(0x0F3, 0x105, 0x1FF, 0x009, 0xABC))
    assert walker.gfn == 0x3AB
    assert walker.ptes[0] == (0x3AB << 12) | P | RW | US | A | D
    assert walker.ptes[3] & ~(A | D) == (PDPT << 12) | TABLE


def test_upper_half_canonical_address() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0x1FF, 0x1FE, 0, 1, (0x300 << 12) | P | RW)
    walker = walk_addr_generic(kvm, tables, PAGING, 0xFFFF_FFFF_8000_1000)
    assert walker.gfn == 0x300
    with pytest.raises(ValueError, match="canonical"):
        walk_addr_generic(kvm, tables, PAGING, 0x0000_8000_0000_0000)


def test_2m_ps_pde_adds_the_offset() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    tables.write_gpte(PML4, 0, (PDPT << 12) | TABLE)
    tables.write_gpte(PDPT, 0, (PD << 12) | TABLE)
    # PD[3] maps the 2M guest page at gfn 0x400 (guest-physical 0x400000).
    tables.write_gpte(PD, 3, (0x400 << 12) | P | RW | US | PS)
    walker = walk_addr_generic(kvm, tables, PAGING, (3 << 21) | (0x123 << 12) | 0x45)
    assert walker.level == 2
    assert walker.gfn == 0x400 + 0x123
    assert walker.table_gfn[1:] == [PD, PDPT, PML4]


def test_1g_ps_pdpte_adds_the_offset() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    tables.write_gpte(PML4, 2, (PDPT << 12) | TABLE)
    # PDPT[1] maps the 1G guest page at guest-physical 0x40000000 (gfn 0x40000).
    tables.write_gpte(PDPT, 1, (0x40000 << 12) | P | RW | US | PS)
    walker = walk_addr_generic(kvm, tables, PAGING, (2 << 39) | (1 << 30) | (0x2A << 21) | (0x17 << 12))
    assert walker.level == 3
    assert walker.gfn == 0x40000 + (0x2A << 9) + 0x17


def test_pwt_pcd_do_not_change_the_walk() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 0, 7, (0x250 << 12) | P | RW | PWT | PCD, upper=TABLE | PWT | PCD)
    assert walk_addr_generic(kvm, tables, PAGING, 7 << 12, write=True).gfn == 0x250


def test_read_walk_sets_a_on_every_level_and_marks_each_table_page() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    leaf = (0x320 << 12) | P | RW | US
    chain(tables, 0, 0, 1, 0x120, leaf)
    assert dirty_gfns(kvm) == set()
    before = {gfn: kvm.memslots.by_id[1].content[gfn - 0x200] for gfn in (PML4, PDPT, PD, PT)}
    walker = walk_addr_generic(kvm, tables, PAGING, 0x320000)
    assert tables.tables[PML4][0] == (PDPT << 12) | TABLE | A
    assert tables.tables[PDPT][0] == (PD << 12) | TABLE | A
    assert tables.tables[PD][1] == (PT << 12) | TABLE | A
    assert tables.tables[PT][0x120] == leaf | A  # A, not D: the access was a read
    assert dirty_gfns(kvm) == {PML4, PDPT, PD, PT}
    assert {PML4, PDPT, PD, PT} <= set(kvm.log.marked_dirty)
    assert all(kvm.memslots.by_id[1].content[gfn - 0x200] == before[gfn] + 1 for gfn in before)
    assert [(u.level, u.table_gfn, u.new & ~u.old) for u in walker.ad_updates] == [
        (4, PML4, A),
        (3, PDPT, A),
        (2, PD, A),
        (1, PT, A),
    ]


def test_write_walk_sets_d_only_on_the_leaf() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    # The upper levels already have A; the leaf has A but not D.
    chain(tables, 0, 0, 1, 0x130, (0x330 << 12) | P | RW | A, upper=TABLE | A)
    walker = walk_addr_generic(kvm, tables, PAGING, 0x330000, write=True)
    assert walker.gfn == 0x330
    assert tables.tables[PT][0x130] == (0x330 << 12) | P | RW | A | D
    assert all(not tables.tables[t][i] & D for t, i in ((PML4, 0), (PDPT, 0), (PD, 1)))
    assert dirty_gfns(kvm) == {PT}
    assert [(u.level, u.table_gfn, u.index, u.new & ~u.old) for u in walker.ad_updates] == [(1, PT, 0x130, D)]
    assert walker.pte_access & ACC_WRITE_MASK


def test_nothing_is_stored_when_a_and_d_are_already_set() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 1, 0x140, (0x340 << 12) | P | RW | A | D, upper=TABLE | A)
    snapshot = {gfn: list(ptes) for gfn, ptes in tables.tables.items()}
    content = bytes(kvm.memslots.by_id[1].content)
    for write in (False, True):
        walker = walk_addr_generic(kvm, tables, PAGING, 0x340000, write=write)
        assert walker.gfn == 0x340 and walker.ad_updates == []
    assert tables.tables == snapshot
    assert dirty_gfns(kvm) == set()
    assert bytes(kvm.memslots.by_id[1].content) == content


def test_a_d_stores_to_an_unlogged_slot_bump_content_without_a_mark() -> None:
    kvm, tables = kvm_with(logging=False), GuestPageTables()
    chain(tables, 0, 0, 1, 0x150, (0x350 << 12) | P | RW)
    walk_addr_generic(kvm, tables, PAGING, 0x350000, write=True)
    slot = kvm.memslots.by_id[1]
    assert slot.dirty_bitmap is None
    assert [slot.content[gfn - 0x200] for gfn in (PML4, PDPT, PD, PT)] == [1, 1, 1, 1]
    assert tables.tables[PT][0x150] & (A | D) == A | D


def test_dirty_ring_takes_one_entry_per_table_page_stored() -> None:
    kvm, tables = kvm_with(mode="ring"), GuestPageTables()
    chain(tables, 0, 0, 1, 0x160, (0x360 << 12) | P | RW, upper=TABLE | A)
    vcpu = kvm.vcpus[0]
    kvm.running_vcpu = vcpu
    try:
        walk_addr_generic(kvm, tables, PAGING, 0x360000, write=True)
    finally:
        kvm.running_vcpu = None
    assert list(vcpu.dirty_ring.entries) == [(1, PT - 0x200)]


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_not_present_at_each_level_faults_with_p0(level: int) -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 1, 0x170, (0x370 << 12) | P | RW | US)
    where = {4: (PML4, 0), 3: (PDPT, 0), 2: (PD, 1), 1: (PT, 0x170)}[level]
    tables.write_gpte(*where, tables.tables[where[0]][where[1]] & ~P)
    snapshot = {gfn: list(ptes) for gfn, ptes in tables.tables.items()}
    read = walk_addr_generic(kvm, tables, PAGING, 0x370000)
    assert read.fault == 0 and read.gfn is None and read.level == level
    write = walk_addr_generic(kvm, tables, PAGING, 0x370000, write=True, user=True)
    assert write.fault == PF_W | PF_U
    assert tables.tables == snapshot
    assert dirty_gfns(kvm) == set()


def test_a_never_written_table_reads_as_not_present() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    walker = walk_addr_generic(kvm, tables, PAGING, 0x1000, fetch=True)
    assert walker.fault == PF_F and walker.level == 4


def test_a_table_outside_every_memslot_faults() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    tables.write_gpte(PML4, 0, (0x9000 << 12) | TABLE)  # a PDPT at gfn 0x9000: no slot holds it
    walker = walk_addr_generic(kvm, tables, PAGING, 0x1000)
    assert walker.fault == 0 and walker.level == 3
    assert dirty_gfns(kvm) == set()


def test_write_to_read_only_page_faults_with_p1_w1() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 1, 0x180, (0x380 << 12) | P | US)
    snapshot = {gfn: list(ptes) for gfn, ptes in tables.tables.items()}
    assert walk_addr_generic(kvm, tables, PAGING, 0x380000, write=True).fault == PF_P | PF_W
    assert walk_addr_generic(kvm, tables, PAGING, 0x380000, write=True, user=True).fault == PF_P | PF_W | PF_U
    assert tables.tables == snapshot and dirty_gfns(kvm) == set()
    # A read goes through.
    assert walk_addr_generic(kvm, tables, PAGING, 0x380000).gfn == 0x380


def test_read_only_upper_level_denies_the_write() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 1, 0x181, (0x381 << 12) | P | RW | US)
    tables.write_gpte(PDPT, 0, (PD << 12) | P | US)  # the PDPTE drops W for everything below it
    walker = walk_addr_generic(kvm, tables, PAGING, 0x381000, write=True)
    assert walker.fault == PF_P | PF_W
    assert not walker.pte_access & ACC_WRITE_MASK


def test_supervisor_write_with_wp_clear_goes_through_read_only_pte() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 1, 0x190, (0x390 << 12) | P | US)
    no_wp = GuestPaging(cr3=PML4, cr0_wp=False)
    walker = walk_addr_generic(kvm, tables, no_wp, 0x390000, write=True)
    assert walker.gfn == 0x390 and walker.fault is None
    assert tables.tables[PT][0x190] & D  # the write dirtied the leaf
    # CR0.WP=0 does not help a user-mode write.
    assert walk_addr_generic(kvm, tables, no_wp, 0x390000, write=True, user=True).fault == PF_P | PF_W | PF_U


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_user_access_needs_us_at_every_level(level: int) -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 1, 0x1A0, (0x3A0 << 12) | P | RW | US)
    where = {4: (PML4, 0), 3: (PDPT, 0), 2: (PD, 1), 1: (PT, 0x1A0)}[level]
    tables.write_gpte(*where, tables.tables[where[0]][where[1]] & ~US)
    snapshot = {gfn: list(ptes) for gfn, ptes in tables.tables.items()}
    assert walk_addr_generic(kvm, tables, PAGING, 0x3A0000, user=True).fault == PF_P | PF_U
    assert tables.tables == snapshot and dirty_gfns(kvm) == set()
    supervisor = walk_addr_generic(kvm, tables, PAGING, 0x3A0000)
    assert supervisor.gfn == 0x3A0 and not supervisor.pte_access & ACC_USER_MASK


@pytest.mark.parametrize("level", [3, 1])
def test_fetch_of_nx_page_faults_with_efer_nx(level: int) -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 1, 0x1B0, (0x3B0 << 12) | P | RW | US)
    where = {3: (PDPT, 0), 1: (PT, 0x1B0)}[level]
    tables.write_gpte(*where, tables.tables[where[0]][where[1]] | NX)
    snapshot = {gfn: list(ptes) for gfn, ptes in tables.tables.items()}
    walker = walk_addr_generic(kvm, tables, PAGING, 0x3B0000, fetch=True, user=True)
    assert walker.fault == PF_P | PF_U | PF_F
    assert not walker.pte_access & ACC_EXEC_MASK
    assert tables.tables == snapshot and dirty_gfns(kvm) == set()
    # A read of the same page is fine; without EFER.NX the NX bit does not count.
    assert walk_addr_generic(kvm, tables, PAGING, 0x3B0000).gfn == 0x3B0
    no_nx = GuestPaging(cr3=PML4, efer_nx=False)
    assert walk_addr_generic(kvm, tables, no_nx, 0x3B0000, fetch=True).gfn == 0x3B0


def test_fetch_bit_is_reported_only_with_efer_nx() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    no_nx = GuestPaging(cr3=PML4, efer_nx=False)
    assert walk_addr_generic(kvm, tables, no_nx, 0x1000, fetch=True).fault == 0
    assert walk_addr_generic(kvm, tables, PAGING, 0x1000, fetch=True).fault == PF_F


def test_access_rights_are_anded_down_the_levels() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 1, 0x1C0, (0x3C0 << 12) | P | RW | US | NX | D)
    tables.write_gpte(PD, 1, (PT << 12) | P | US)  # the PDE: no W
    walker = walk_addr_generic(kvm, tables, PAGING, 0x3C0000, user=True)
    # Above the leaf: U and X (W lost at the PDE); with the leaf: X lost too.
    assert walker.pt_access == ACC_USER_MASK | ACC_EXEC_MASK
    assert walker.pte_access == ACC_USER_MASK


def test_read_through_clean_leaf_loses_w_and_through_dirty_keeps_it() -> None:
    kvm, tables = kvm_with(), GuestPageTables()
    chain(tables, 0, 0, 1, 0x1D0, (0x3D0 << 12) | P | RW | US)
    tables.write_gpte(PT, 0x1D1, (0x3D1 << 12) | P | RW | US | D)
    clean = walk_addr_generic(kvm, tables, PAGING, 0x3D0000)
    assert clean.pte_access == ACC_USER_MASK | ACC_EXEC_MASK
    assert not tables.tables[PT][0x1D0] & D  # a read does not dirty the leaf
    dirty = walk_addr_generic(kvm, tables, PAGING, 0x3D1000)
    assert dirty.pte_access == ACC_WRITE_MASK | ACC_USER_MASK | ACC_EXEC_MASK
    # The write through the clean leaf keeps W (it sets D).
    assert walk_addr_generic(kvm, tables, PAGING, 0x3D0000, write=True).pte_access & ACC_WRITE_MASK


def test_protect_clean_gpte() -> None:
    every = ACC_WRITE_MASK | ACC_USER_MASK | ACC_EXEC_MASK
    assert protect_clean_gpte(every, P | RW | A) == ACC_USER_MASK | ACC_EXEC_MASK
    assert protect_clean_gpte(every, P | RW | A | D) == every
    assert protect_clean_gpte(ACC_USER_MASK, P | D) == ACC_USER_MASK


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ({"cr0_pg": False}, "paging is off"),
        ({"cr4_pae": False}, "32-bit paging"),
        ({"efer_lma": False}, "outside long mode"),
    ],
)
def test_non_long_mode_paging_is_refused(state: dict[str, bool], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        GuestPaging(cr3=PML4, **state)


def test_write_gpte_refuses_bad_index_and_value() -> None:
    tables = GuestPageTables()
    with pytest.raises(ValueError):
        tables.write_gpte(PT, 512, P)
    with pytest.raises(ValueError):
        tables.write_gpte(PT, 0, 1 << 64)
    tables.write_gpte(PT, 511, P)
    assert tables.tables[PT] == [0] * 511 + [P]
