"""The native guest of `live/`: its page tables, its 64-bit program, and, where /dev/kvm opens, proof from
the kernel's own counters that its accesses ran through the kernel's MMU, not its instruction emulator.

A check against the kernel must first show that it can tell the behaviours apart, so every kernel test
here runs the same accesses on the emulated guest too and asserts the counters differ as they must:
the emulated guest costs instructions and takes no page fault, the native one takes faults and builds
sptes. The facts checked are those of spec live-kernel.md §3 on a shadow-MMU host; on a TDP host the
same guest exercises the TDP MMU, and the tests that hold only for a shadow MMU say so and skip.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from live.guest_code import DONE_PORT, access_program
from live.kernel_tables import KernelTables
from live.paging import (
    PTE_LARGE,
    PTE_PRESENT,
    PTE_USER,
    PTE_WRITABLE,
    MappedRange,
    identity_map,
    table_pages,
)
from live.report import availability
from live.stats import StatsFile
from live.tracefs import SpteSet, TablePage, TraceSession, TraceStep, parse, unavailable
from live.vm import GuestTimeoutError, KvmVm

UNAVAILABLE = availability()
NO_TRACE = unavailable()
needs_kvm = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no usable KVM device: {UNAVAILABLE}")


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "absent"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "absent"


needs_thp = pytest.mark.skipif(
    _thp_mode() not in ("always", "madvise"),
    reason=f"transparent huge pages are {_thp_mode()!r} on this host: no 2M backing for large sptes",
)

SLOT_GFN = 0x200
SYSTEM_GFN = 0xFD000


# ---------------------------------------------------------------------------------------------------------
# The page tables


def entries(page: bytes) -> dict[int, int]:
    return {i: v for i, (v,) in enumerate(struct.iter_unpack("<Q", page)) if v}


def walk(tables: object, gfn: int) -> tuple[int, int]:
    """(level of the leaf, frame it maps) for `gfn`, walking the built pages as the CPU would."""
    from live.paging import GuestPageTables

    assert isinstance(tables, GuestPageTables)
    page = tables.pages[0]
    for level in (4, 3, 2, 1):
        entry = entries(page)[(gfn >> (9 * (level - 1))) & 511]
        assert entry & (PTE_PRESENT | PTE_WRITABLE | PTE_USER) == PTE_PRESENT | PTE_WRITABLE | PTE_USER
        frame = entry >> 12 & ((1 << 40) - 1)
        if level == 1 or entry & PTE_LARGE:
            return level, frame
        page = tables.pages[frame - tables.base_gfn]
    raise AssertionError("unreachable")


def test_the_identity_map_uses_2m_pages_exactly_where_a_slot_holds_an_aligned_block_whole() -> None:
    # gfns 0x1f0-0x60f: 16 pages before the first 2M boundary, two whole 2M blocks, 16 pages after.
    tables = identity_map([MappedRange(0x1F0, 0x420, True)], 0x9000)
    assert (tables.large, tables.small) == (2, 32)
    assert walk(tables, 0x1F0) == (1, 0x1F0)
    assert walk(tables, 0x200) == (2, 0x200)
    assert walk(tables, 0x3FF) == (2, 0x200)  # inside the 2M page: the leaf maps its first frame
    assert walk(tables, 0x400) == (2, 0x400)
    assert walk(tables, 0x60F) == (1, 0x60F)
    assert tables.cr3 == 0x9000 << 12
    assert table_pages([MappedRange(0x1F0, 0x420, True)]) == len(tables.pages) == 5  # PML4 PDPT PD 2×PT
    # The page directory (third table) maps the first GiB; the first page table gfns 0x000-0x1ff.
    assert tables.span(0x9002, 2) == (0, 0x40000)
    assert tables.span(0x9003, 1) == (0, 0x200)
    assert tables.span(0x9003, 2) is None and tables.span(0x8FFF, 1) is None


def test_a_slot_on_4k_host_pages_is_mapped_with_4k_guest_pages_only() -> None:
    tables = identity_map([MappedRange(0x200, 0x200, False)], 0x9000)
    assert (tables.large, tables.small) == (0, 0x200)
    assert walk(tables, 0x3FF) == (1, 0x3FF)


def test_the_native_program_ends_on_an_out_and_decrements_without_a_rex_prefix() -> None:
    code = access_program(0x200, 3, 1, True, native=True)
    assert code.endswith(bytes([0xE6, DONE_PORT]))
    assert bytes([0xFF, 0xC9]) in code  # dec ecx; 0x49 would be REX.WB in 64-bit mode
    emulated = access_program(0x200, 3, 1, True)
    assert emulated.endswith(bytes([0xF4])) and bytes([0x49]) in emulated


# ---------------------------------------------------------------------------------------------------------
# The kernel


def counters(vm: KvmVm) -> dict[str, int]:
    """The VM's and vCPU 0's counters, one namespace (the names do not overlap)."""
    vm_stats, vcpu_stats = StatsFile.of(vm.vm_fd), StatsFile.of(vm.vcpus[0].fd)
    try:
        return {**vm_stats.counters(), **vcpu_stats.counters()}
    finally:
        vm_stats.close()
        vcpu_stats.close()


def delta(vm: KvmVm, action: Callable[[], object]) -> dict[str, int]:
    before = counters(vm)
    action()
    after = counters(vm)
    return {name: after[name] - before.get(name, 0) for name in after}


def store(vm: KvmVm, gfn: int, count: int = 1) -> Callable[[], None]:
    return lambda: vm.run_code(0, access_program(gfn, count, 1, True, native=vm.native))


def native_vm(huge: bool = True) -> KvmVm:
    vm = KvmVm(1, native=True)
    vm.add_slot(1, SLOT_GFN, 0x400, huge=huge)
    vm.boot_native(2, SYSTEM_GFN)
    return vm


@needs_kvm
def test_the_native_guest_faults_through_the_mmu_where_the_emulated_one_emulates() -> None:
    with native_vm(huge=False) as vm:
        native = delta(vm, store(vm, SLOT_GFN + 0x10, 100))
    with KvmVm(1) as vm:
        vm.add_slot(1, SLOT_GFN, 0x400)
        vm.add_code_slot(2, SYSTEM_GFN)
        emulated = delta(vm, store(vm, SLOT_GFN + 0x10, 100))
    # 100 first touches of 4K-backed pages: one fault each, one 4K spte each, and the loop not emulated.
    assert native["pf_fixed"] >= 100 and native["pages_4k"] >= 100
    assert native["insn_emulation"] < 10
    # The same stores emulated: about four instructions a store, no fault, no spte.
    assert emulated["insn_emulation"] >= 300
    assert emulated["pf_fixed"] == 0 and emulated["pages_4k"] == 0


@needs_kvm
@needs_thp
def test_logging_write_protects_the_2m_spte_and_the_first_write_drops_it_to_one_4k_spte() -> None:
    with native_vm() as vm:
        first = delta(vm, store(vm, SLOT_GFN))
        assert first["pages_2m"] == 1, f"no 2M spte for a THP-backed 2M guest page: {first}"
        vm.set_logging(1, True)
        enable = delta(vm, lambda: None)
        assert enable["pages_2m"] == 0 and enable["pages_4k"] == 0  # neither split nor zapped
        write = delta(vm, store(vm, SLOT_GFN + 0x50))
        assert (write["pages_2m"], write["pages_4k"], write["pf_fixed"]) == (-1, 1, 1)
        assert vm.get_dirty_log(1) == [SLOT_GFN + 0x50]


@needs_kvm
def test_a_guest_that_never_ends_is_stopped_by_the_watchdog_and_leaves_nothing_behind() -> None:
    fds = set(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    with native_vm(huge=False) as vm:
        vm.run_timeout = 0.3
        with pytest.raises(GuestTimeoutError, match=r"still running after 0\.3 s"):
            vm.run_code(0, bytes([0xEB, 0xFE]))  # jmp $
        vm.run_timeout = 5.0
        store(vm, SLOT_GFN)()  # the vCPU runs again after the kick
    assert set(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads


# ---------------------------------------------------------------------------------------------------------
# The kernel's tracepoints

# Lines as this kernel's `trace` file prints them (format: events/kvmmmu/*/format's print fmt).
TRACE_TEXT = """\
# tracer: nop
#
# entries-in-buffer/entries-written: 4/4   #P:2
py-1 [000] ...1. 9.850723: kvm_mmu_spte_requested: gfn 250 pfn 1db650 level 1
py-1 [000] ...1. 9.850726: kvm_mmu_get_page: sp gen 0 gfn 200 l1 8-byte q0 direct wux nxe ad root 0 sync new
py-1 [000] ...1. 9.850730: kvm_mmu_set_spte: gfn 250 spte 1db650e67 (rwxu) level 1 at 17396a280
py-1 [000] ...1. 9.850731: kvm_mmu_prepare_zap_page: sp gen 0 gfn 0 l2 8-byte q0 wux nxe ad root 0 sync
"""


def test_a_trace_is_read_into_sptes_with_their_table_and_index_and_tables_created_and_zapped() -> None:
    step = parse(TRACE_TEXT.splitlines())
    assert step.sptes_set == (SpteSet(gfn=0x250, level=1, spte=0x1DB650E67, table=0x17396A000, index=0x50),)
    assert step.tables_created == (TablePage(0x200, 1, True),)
    assert step.tables_zapped == (TablePage(0, 2, False),)
    assert step.counts["kvm_mmu_spte_requested"] == 1 and not step.overrun
    lost = parse(["# entries-in-buffer/entries-written: 10/12   #P:2"])
    assert lost.overrun


def tracefs_mounts() -> int:
    return Path("/proc/mounts").read_text().count(" tracefs ")


@needs_kvm
@needs_thp
@pytest.mark.skipif(NO_TRACE is not None, reason=f"no kvmmmu tracepoints: {NO_TRACE}")
def test_the_kernel_s_own_sptes_show_the_2m_spte_kept_at_enable_and_one_4k_spte_at_the_first_write() -> None:
    mounts = tracefs_mounts()
    with TraceSession() as trace, native_vm() as vm:
        trace.take()
        store(vm, SLOT_GFN)()
        first = trace.take()
        vm.set_logging(1, True)
        enable = trace.take()
        store(vm, SLOT_GFN + 0x50)()
        write = trace.take()
        instance = trace.instance
    huge = [(s.gfn, s.level, bool(s.spte & 0x2)) for s in first.sptes_set if s.gfn == SLOT_GFN]
    assert huge == [(SLOT_GFN, 2, True)]
    assert enable.sptes_set == () and enable.tables_zapped == ()  # neither split nor zapped
    assert [(s.gfn, s.level, bool(s.spte & 0x2)) for s in write.sptes_set] == [(SLOT_GFN + 0x50, 1, True)]
    assert write.sptes_set[0].index == 0x50
    assert write.tables_created == (TablePage(SLOT_GFN, 1, True),)  # the direct table under the 2M spte
    assert instance is not None and not instance.exists()
    assert tracefs_mounts() == mounts


def test_the_kernel_s_tables_group_leaves_by_table_page_and_drop_a_zapped_direct_table() -> None:
    huge = SpteSet(gfn=0x200, level=2, spte=0x1E6200EE7, table=0x1000, index=1)
    small = SpteSet(gfn=0x250, level=1, spte=0x1E6250E67, table=0x2000, index=0x50)
    other = SpteSet(gfn=0x400, level=2, spte=0x1E6400EE7, table=0x1000, index=2)
    tables = KernelTables()
    tables.apply(TraceStep((huge, other), (), (), {}, False))
    assert tables.leaf_for(0x251) == huge
    # A direct level-1 table created for gfn 0x200 replaces the 2M leaf of 0x200, not the one of 0x400.
    tables.apply(TraceStep((small,), (TablePage(0x200, 1, True),), (), {}, False))
    assert tables.leaves_per_level() == {1: 1, 2: 1}
    assert tables.leaf_for(0x250) == small and tables.leaf_for(0x251) is None
    assert [t["table"] for t in tables.to_json()] == ["0x1000", "0x2000"]
    # Zapping the direct level-1 page of gfn 0x200 removes the table holding 0x250, not the 2M leaf.
    tables.apply(TraceStep((), (), (TablePage(0x200, 1, True),), {}, False))
    assert tables.leaves_per_level() == {2: 1} and tables.leaf_for(0x400) == other
    # An indirect page is matched through the guest's own tables only.
    tables.apply(TraceStep((), (), (TablePage(0xFD004, 2, False),), {}, False))
    assert tables.leaves_per_level() == {2: 1}
    tables.guest_span = lambda page: (0x400, 0x40400) if page.gfn == 0xFD004 else None
    tables.apply(TraceStep((), (), (TablePage(0xFD004, 2, False),), {}, False))
    assert tables.leaves_per_level() == {}


@needs_kvm
def test_a_run_stops_once_its_whole_budget_is_spent() -> None:
    """Steps that each end in time cannot add up past the run's budget: the run fails, saying so."""
    from engine.scenario import parse_scenario
    from live.backend import run_with_stats

    steps = [{"op": "write", "gfn": hex(SLOT_GFN + k), "count": 1} for k in range(64)]
    scenario = parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "memslots": [{"id": 1, "base_gfn": hex(SLOT_GFN), "npages": 0x400}],
            "steps": steps,
        }
    )
    with pytest.raises(GuestTimeoutError, match=r"budget is spent"):
        run_with_stats(scenario, guest="native", budget_s=0.0)
    assert len(run_with_stats(scenario, guest="native").logs) == 64


def test_without_root_the_tracepoints_are_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("live.tracefs.os.geteuid", lambda: 1000)
    reason = unavailable()
    assert reason is not None and reason.startswith("not root") and "\n" not in reason


def test_a_tdp_spte_change_is_followed_by_gfn_and_level() -> None:
    """On a TDP host, kvm_tdp_mmu_spte_changed reports write protection and zaps: the leaf set for that
    gfn and level takes the new value, or goes when the new value is not present (no MMU-present bit)."""
    text = [
        "py-1 [000] ...1. 9.1: kvm_tdp_mmu_spte_changed: as id 0 gfn 200 level 2 old_spte 6000000ee7"
        " new_spte 6000000ee5",
        "py-1 [000] ...1. 9.2: kvm_tdp_mmu_spte_changed: as id 0 gfn 250 level 1 old_spte 6000250e67"
        " new_spte 5a0",
    ]
    step = parse(text)
    changes = [(c.gfn, c.level, c.new) for c in step.sptes_changed]
    assert changes == [(0x200, 2, 0x6000000EE5), (0x250, 1, 0x5A0)]
    huge = SpteSet(gfn=0x200, level=2, spte=0x6000000EE7, table=0x1000, index=1)
    small = SpteSet(gfn=0x250, level=1, spte=0x6000250E67, table=0x2000, index=0x50)
    tables = KernelTables()
    tables.apply(TraceStep((huge, small), (), (), {}, False))
    tables.apply(step)
    assert tables.leaf_for(0x201) == SpteSet(0x200, 2, 0x6000000EE5, 0x1000, 1)  # W gone
    assert tables.leaves_per_level() == {2: 1}  # the 4K leaf zapped
    assert TraceStep.from_json(step.to_json()) == step


def test_a_large_leaf_set_again_hides_the_small_leaves_of_its_region() -> None:
    """Logging off drops a region's 4K sptes without an event; when the region is mapped 2M again, its
    4K leaves are gone from the kernel's tables, and a later write under logging that links the direct
    table the kernel kept (get_page "existing") drops the 2M leaf again."""
    small = SpteSet(gfn=0x250, level=1, spte=0x37DE50E67, table=0x2000, index=0x50)
    again = SpteSet(gfn=0x200, level=2, spte=0x37DE00EE7, table=0x1000, index=1)
    other = SpteSet(gfn=0x400, level=1, spte=0x37E000E67, table=0x3000, index=0)
    tables = KernelTables()
    tables.apply(TraceStep((small, other), (), (), {}, False))
    tables.apply(TraceStep((again,), (), (), {}, False))
    assert tables.leaf_for(0x250) == again and tables.leaf_for(0x400) == other
    reuse = parse(
        [
            "py-1 [000] ...1. 9.1: kvm_mmu_get_page: sp gen 0 gfn 200 l1 8-byte q0 direct wux nxe ad root 0"
            " sync existing",
            "py-1 [000] ...1. 9.2: kvm_mmu_set_spte: gfn 200 spte 37de00e67 (rwxu) level 1 at 2000",
        ]
    )
    assert reuse.tables_created == () and reuse.tables_linked == (TablePage(0x200, 1, True),)
    tables.apply(reuse)
    assert tables.leaf_for(0x201) is None and tables.leaf_for(0x200) == reuse.sptes_set[0]
