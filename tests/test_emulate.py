"""The emulated guest (`engine.emulate`, `Simulation(..., guest_execution="emulated")`): KVM's instruction
emulator reads and writes guest memory without an spte, and every store marks its page dirty.

Expectations follow from the kernel rule the module names (kvm_vcpu_write_guest marks its page each time,
kvm_vcpu_read_guest never) and from the dirty-log ioctls, which are the engine's own code in either mode:
bitmap GET returns and clears, manual protect GET only copies, the ring keeps one entry per store. The
MMU's policy switches cannot change an emulated run, so every test runs under every preset and expects
the same.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import make_scenario

from engine.invariants import check_all
from engine.kvm import DIRTY_RING_RSVD_ENTRIES, DIRTY_RING_SIZE
from engine.policy import make_policy
from engine.result import result_json
from engine.simulation import Simulation, StepResult
from engine.trace import DirtyRingFull
from scenarios import builtin_scenarios

SLOT = {"id": 1, "base_gfn": "0x200", "npages": 512, "host_page": "2M", "base_pfn": "0x80000"}


def emulated(
    steps: list[dict[str, Any]], preset: str, mode: str = "bitmap", vcpus: int = 1, slots: Any = None
) -> tuple[Simulation, list[StepResult]]:
    """Run `steps` on the example slot as an emulated guest, checking every invariant after every step."""
    scenario = make_scenario(slots or [SLOT], steps, vcpus=vcpus)
    sim = Simulation(scenario, make_policy(preset, {"dirty_log_mode": mode}), guest_execution="emulated")
    results = []
    for _ in scenario.steps:
        step = sim.step()
        assert step.violations == [], (step.index, step.violations)
        assert check_all(sim.kvm, step.index) == [], step.index
        results.append(step)
    return sim, results


def test_no_access_goes_through_the_mmu(preset: str) -> None:
    sim, steps = emulated(
        [
            {"op": "read", "gfn": "0x210", "count": 8},
            {"op": "write", "gfn": "0x2a0", "count": 3, "stride": 2},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
        ],
        preset,
    )
    assert all(step.fault_counts == {"fast": 0, "slow": 0} for step in steps)
    assert all(step.spte_changes == [] for step in steps)
    assert all(not tlb for vcpu in sim.kvm.vcpus for tlb in vcpu.tlb.by_level)
    assert sim.kvm.stat.pf_fixed == 0
    slot = sim.kvm.memslots.by_id[1]
    assert [slot.content[gfn - 0x200] for gfn in (0x210, 0x2A0, 0x2A2, 0x2A4, 0x250)] == [0, 1, 1, 1, 1]
    names = {event.name for step in steps for event in step.events or []}
    assert not names & {"guest_access", "tdp_page_fault", "fast_page_fault", "handle_ept_violation"}


def test_the_ring_takes_one_entry_per_store_and_none_per_load(preset: str) -> None:
    sim, steps = emulated(
        [
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x211", "count": 3, "stride": 0},
            {"op": "read", "gfn": "0x212", "count": 5},
            {"op": "write", "gfn": "0x300", "vcpu": 1},
            {"op": "write", "gfn": "0x211"},
        ],
        preset,
        "ring",
        vcpus=2,
    )
    rings = {vcpu.id: list(vcpu.dirty_ring.entries) for vcpu in sim.kvm.vcpus}
    assert rings == {0: [(1, 0x11)] * 4, 1: [(1, 0x100)]}
    assert steps[1].marked_dirty == [0x211]
    assert steps[2].marked_dirty == []
    result: dict[str, Any] = result_json(sim, steps)
    assert result["final"]["dirty_rings"] == {"0": [0x211] * 4, "1": [0x300]}


def test_reset_dirty_ring_returns_each_page_once_and_empties_the_rings(preset: str) -> None:
    _, steps = emulated(
        [
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x211", "count": 100, "stride": 0},
            {"op": "write", "gfn": "0x300", "vcpu": 1},
            {"op": "reset_dirty_ring"},
            {"op": "reset_dirty_ring"},
        ],
        preset,
        "ring",
        vcpus=2,
    )
    assert steps[3].dirty_log == [0x211, 0x300]
    assert steps[4].dirty_log == []


def test_reads_are_never_logged_in_any_mode(preset: str) -> None:
    for mode in ("bitmap", "manual_clear"):
        _, steps = emulated(
            [
                {"op": "write", "gfn": "0x200", "count": 512},
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "read", "gfn": "0x200", "count": 512},
                {"op": "get_dirty_log", "slot": 1},
            ],
            preset,
            mode,
        )
        assert steps[3].dirty_log == []
    _, steps = emulated(
        [{"op": "enable_dirty_log", "slot": 1}, {"op": "read", "gfn": "0x200"}, {"op": "reset_dirty_ring"}],
        preset,
        "ring",
    )
    assert steps[2].dirty_log == []


def test_bitmap_get_clears_and_manual_get_only_copies(preset: str) -> None:
    steps = [
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x210", "count": 3, "stride": 0},
        {"op": "get_dirty_log", "slot": 1},
        {"op": "get_dirty_log", "slot": 1},
        {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 64},
        {"op": "get_dirty_log", "slot": 1},
    ]
    _, bitmap = emulated(steps, preset, "bitmap")
    assert [bitmap[i].dirty_log for i in (2, 3, 5)] == [[0x210], [], []]
    _, manual = emulated(steps, preset, "manual_clear")
    assert [manual[i].dirty_log for i in (2, 3, 5)] == [[0x210], [0x210], []]


def test_initially_set_and_the_ioctls_the_mode_lacks_are_the_engines(preset: str) -> None:
    _, steps = emulated(
        [{"op": "enable_dirty_log", "slot": 1}, {"op": "get_dirty_log", "slot": 1}], preset, "initially_set"
    )
    assert steps[1].dirty_log == list(range(0x200, 0x400))
    _, ring = emulated(
        [{"op": "enable_dirty_log", "slot": 1}, {"op": "get_dirty_log", "slot": 1}], preset, "ring"
    )
    assert ring[1].dirty_log is None and ring[1].error == "KVM_GET_DIRTY_LOG: ENXIO"


def test_a_store_to_a_slot_that_is_not_logged_marks_nothing_and_logging_off_drops_nothing(
    preset: str,
) -> None:
    _, steps = emulated(
        [
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
            {"op": "disable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x260"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x201"},
            {"op": "get_dirty_log", "slot": 1},
        ],
        preset,
    )
    assert steps[3].marked_dirty == []
    assert steps[6].dirty_log == [0x201]


def test_a_migration_of_an_emulated_guest_loses_nothing(preset: str) -> None:
    sim, steps = emulated(
        [
            {"op": "write", "gfn": "0x210"},
            {"op": "migrate_begin"},
            {"op": "write", "gfn": "0x250", "count": 4, "stride": 0},
            {"op": "read", "gfn": "0x2c0"},
            {"op": "migrate_round"},
            {"op": "write", "gfn": "0x300"},
            {"op": "migrate_end"},
        ],
        preset,
    )
    assert steps[4].dirty_log == [0x250]
    assert steps[6].dirty_log == [0x300]
    assert sim.migration.lost == []


def test_a_soft_full_ring_stops_the_emulated_vcpu_until_reset(preset: str) -> None:
    soft_limit = DIRTY_RING_SIZE - DIRTY_RING_RSVD_ENTRIES
    sim, steps = emulated(
        [
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x200", "count": soft_limit + 10, "stride": 0},
            {"op": "write", "gfn": "0x201"},
            {"op": "reset_dirty_ring"},
            {"op": "write", "gfn": "0x201"},
        ],
        preset,
        "ring",
    )
    (full,) = [event for event in steps[1].events or [] if isinstance(event, DirtyRingFull)]
    assert (full.gfn, full.used, full.skipped) == (0x200, soft_limit, 10)
    slot = sim.kvm.memslots.by_id[1]
    assert slot.content[0] == soft_limit
    assert steps[2].marked_dirty == [] and slot.content[1] == 1  # only the store after the reset
    assert steps[3].dirty_log == [0x200]
    assert steps[4].marked_dirty == [0x201]


def test_the_mmu_is_the_default_and_an_unknown_execution_is_refused() -> None:
    scenario = make_scenario([SLOT], [{"op": "read", "gfn": "0x210"}])
    assert Simulation(scenario, make_policy("lazy")).guest_execution == "mmu"
    assert Simulation(scenario, make_policy("lazy")).step().fault_counts == {"fast": 0, "slow": 1}
    with pytest.raises(ValueError, match="unknown guest execution 'native'"):
        Simulation(scenario, make_policy("lazy"), guest_execution="native")  # type: ignore[arg-type]


def test_on_read_mostly_logging_the_emulated_guest_and_lazy_log_differently() -> None:
    """The oracle tells behaviours apart: 3.16 maps a read fault of a logged page writable and marks it;
    an emulated read never marks anything."""
    scenario = dict(builtin_scenarios())["read-mostly-logging"]
    logs = {}
    for execution in ("mmu", "emulated"):
        sim = Simulation(scenario, make_policy("lazy"), detail="summary", guest_execution=execution)
        logs[execution] = [step.dirty_log for step in sim.run() if step.dirty_log is not None]
    assert logs["emulated"] == [[0x480]]
    assert logs["mmu"] != logs["emulated"]
    assert 0x480 in logs["mmu"][0] and len(logs["mmu"][0]) > 1
