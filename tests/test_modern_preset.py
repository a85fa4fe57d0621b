"""The `modern` preset: the spec table's later-kernel column, on the worked example, on the live-kernel
note's facts, and on every built-in lesson.

Expected values come from kvm-mmu.md: the live-kernel note (1)–(5), §5.1–5.3 and §6.3, with the spte
layout of §1.1/§1.3; none is copied from a run.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from conftest import HW, MW, PS, SLOT_2M, A, D, W, leaf, load_scenario, make_scenario, spec_example, spte_at

from engine.invariants import check_all
from engine.policy import PRESET_DESCRIPTIONS, make_policy
from engine.result import result_json, step_json
from engine.scenario import Scenario, parse_scenario
from engine.simulation import Simulation
from scenarios import builtin_names

LARGE_RW = leaf(0x80000, PS | W | A | HW | MW)  # §1.3: 0x80000DF7


States = list[tuple[dict[str, Any], dict[str, Any]]]


def walk(scenario: Scenario) -> States:
    """Each step's result and the state after it, under `modern`, with the invariants of §3.13 checked
    after every step by the engine's own checker and by the whole-state one."""
    sim = Simulation(scenario, make_policy("modern"), detail="full")
    out = []
    while not sim.done:
        step = sim.step()
        assert step.violations == [], (step.index, step.violations)
        assert check_all(sim.kvm, step.index) == [], step.index
        out.append((step_json(step), cast(dict[str, Any], result_json(sim, [])["final"])))
    return out


def dirty_logs(states: States) -> list[list[int]]:
    return [step["dirty_log"] for step, _ in states if step["dirty_log"] is not None]


def value(state: dict[str, Any], level: int, sp_gfn: int, index: int) -> int | None:
    found = spte_at(state["sptes"], level, sp_gfn, index)
    return None if found is None else int(found["value"], 16)


def fault_rows(step: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(f["path"], f["fast_result"]) for f in step["faults"]]


def l1_leaves(state: dict[str, Any]) -> dict[int, int]:
    return {
        s["index"]: int(s["value"], 16)
        for s in state["sptes"]
        if s["leaf"] and (s["level"], s["sp_gfn"]) == (1, 0x200)
    }


def test_the_description_names_what_modern_leaves_out() -> None:
    text = PRESET_DESCRIPTIONS["modern"]
    for left_out in ("RCU", "rmaps", "NX huge pages", "mmu notifiers", "PML", "dirty ring", "manual clear"):
        assert left_out in text, left_out


# --- the worked example (§7), as the spec's literal ioctls -----------------------------------------------

READ_0X210, WRITE_0X2A0, ENABLE, READ_0X2C0, WRITE_0X250 = 0, 1, 2, 3, 4
WRITE_0X260, WRITE_0X2C0, ROUND_1, REWRITE_0X250, WRITE_0X300, ROUND_2 = 5, 6, 7, 8, 9, 10
DISABLE, REREAD = 11, 12


@pytest.fixture(scope="module")
def worked() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    data = spec_example()
    # §5.3 and §6.3 ("after disable and repopulate, the counts equal the populated counts").
    data["steps"] += [{"op": "disable_dirty_log", "slot": 1}, {"op": "read", "gfn": "0x210"}]
    return walk(parse_scenario(data))


def test_worked_example_logs_what_the_live_kernel_logs(
    worked: States,
) -> None:
    # Live-kernel note (2).
    assert dirty_logs(worked) == [[0x250, 0x260, 0x2C0], [0x250, 0x300]]


def test_worked_example_step1_is_the_3x_step1(worked: States) -> None:
    # Logging is off: a read maps the 2M range writable (§7.2 step 1; read_fault_marks_dirty only concerns
    # logged slots), then the store sets D without an exit (step 2).
    assert value(worked[READ_0X210][1], 2, 0, 1) == LARGE_RW
    assert worked[WRITE_0X2A0][0]["fault_counts"] == {"fast": 0, "slow": 0}


def test_worked_example_enable_splits_then_write_protects(
    worked: States,
) -> None:
    # §5.1 steps 2-4 and §5.2: the 2M spte (R X PS A D HW MW after the store, W about to go) becomes 512
    # 4K sptes with its bits, PS cleared, pfn 0x80000 + i, all read-only; pages_2m 0; one flush.
    step, state = worked[ENABLE]
    assert l1_leaves(state) == {i: leaf(0x80000 + i, A | D | HW | MW) for i in range(512)}
    assert state["stats"]["lpages"] == 0
    assert step["tlb_flushes"] == 1
    assert state["dirty_bitmaps"] == {"1": []}


def test_worked_example_reads_do_not_fault_and_writes_are_fast(
    worked: States,
) -> None:
    # §5.2: "the first write to any page is a fast-path fault on a 4K spte"; the read of 0x2c0 goes through
    # its read-only 4K spte. Fault counts of steps 4-8: 5 fast, 0 slow (3.16: 4 slow + 1 fast, §7.3).
    assert worked[READ_0X2C0][0]["fault_counts"] == {"fast": 0, "slow": 0}
    assert worked[READ_0X2C0][0]["spte_changes"] == []
    for index, gfn in (
        (WRITE_0X250, 0x250),
        (WRITE_0X260, 0x260),
        (WRITE_0X2C0, 0x2C0),
        (REWRITE_0X250, 0x250),
        (WRITE_0X300, 0x300),
    ):
        step, _ = worked[index]
        assert fault_rows(step) == [("fast", "fixed")], gfn
        assert [f["error_code"] for f in step["faults"]] == [0b11]  # PRESENT | WRITE
        assert step["marked_dirty"] == [gfn]
        assert step["tlb_flushes"] == 0  # a permission increase (§3.11)
    assert l1_leaves(worked[WRITE_0X2C0][1])[0x50] == leaf(0x80050, W | A | D | HW | MW)


def test_worked_example_gets_write_protect_and_flush(
    worked: States,
) -> None:
    # §5.1: GET touches only 4K leaves, clears W (HW, MW kept), flushes after unlock when bits were set.
    for index in (ROUND_1, ROUND_2):
        step, state = worked[index]
        assert step["tlb_flushes"] == 1
        assert all(not value & W for value in l1_leaves(state).values())
    flushes = [e for e in worked[ROUND_1][0]["events"] if e["name"] == "kvm_flush_remote_tlbs"]
    assert [(e["caller"], e["under_mmu_lock"]) for e in flushes] == [("kvm_vm_ioctl_get_dirty_log", False)]


def test_worked_example_disable_recovers_the_2m_page(
    worked: States,
) -> None:
    # §5.3: the PDE becomes non-present at once; the next fault builds the 2M spte again (lpages back to 1).
    step, state = worked[DISABLE]
    assert spte_at(state["sptes"], 2, 0, 1) is None
    assert [s for s in state["sptes"] if s["leaf"]] == []
    assert step["tlb_flushes"] == 1
    step, state = worked[REREAD]
    assert fault_rows(step) == [("slow", None)]
    assert value(state, 2, 0, 1) == LARGE_RW
    assert state["stats"]["lpages"] == 1


# --- the live-kernel note ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefaulted", [False, True])
def test_note1_a_read_of_a_logged_page_is_not_logged(prefaulted: bool) -> None:
    # "A read of a page in a logged slot does not set its dirty bit, even when host memory was pre-faulted."
    steps: list[dict[str, Any]] = [
        *([{"op": "read", "gfn": "0x2f0"}] if prefaulted else []),
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "read", "gfn": "0x210", "count": 4, "stride": "0x40"},
        {"op": "get_dirty_log", "slot": 1},
    ]
    states = walk(make_scenario([SLOT_2M], steps))
    assert dirty_logs(states) == [[]]
    _, state = states[-1]
    for gfn in (0x210, 0x250, 0x290, 0x2D0):
        found = spte_at(state["sptes"], 1, 0x200, gfn - 0x200)
        assert found is not None and found["present"] and not found["writable"]
        assert found["host_writable"] and found["mmu_writable"]


def test_note3_a_write_storm_logs_every_page_and_a_rewrite_the_rewritten() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "write", "gfn": "0x200"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x200", "count": 512},
        {"op": "get_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x200", "count": 256},
        {"op": "get_dirty_log", "slot": 1},
    ]
    states = walk(make_scenario([SLOT_2M], steps))
    assert dirty_logs(states) == [list(range(0x200, 0x400)), list(range(0x200, 0x300))]


def test_note4_two_vcpus_log_exactly_their_writes() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "read", "gfn": "0x210", "vcpu": 0},
        {"op": "read", "gfn": "0x2a0", "vcpu": 1},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x211", "vcpu": 0},
        {"op": "write", "gfn": "0x300", "vcpu": 1},
        {"op": "get_dirty_log", "slot": 1},
    ]
    assert dirty_logs(walk(make_scenario([SLOT_2M], steps, vcpus=2))) == [[0x211, 0x300]]


def test_note5_disable_reenable_write_logs_only_that_write() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "write", "gfn": "0x210"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x250"},
        {"op": "get_dirty_log", "slot": 1},
        {"op": "disable_dirty_log", "slot": 1},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x201"},
        {"op": "get_dirty_log", "slot": 1},
    ]
    assert dirty_logs(walk(make_scenario([SLOT_2M], steps))) == [[0x250], [0x201]]


# --- every built-in lesson ----------------------------------------------------------------------------------

# A gigabyte split to 4K is 262144 sptes: its per-step state dumps are left to the engine's own checker.
WHOLE_STATE_EVERY_STEP = [name for name in builtin_names() if name != "one-gig-page"]


@pytest.mark.parametrize("name", WHOLE_STATE_EVERY_STEP)
def test_every_builtin_keeps_the_invariants_after_every_step(name: str) -> None:
    walk(load_scenario(name))


def written_since_harvest(scenario: Scenario) -> list[set[int]]:
    """For each step that returns a dirty log, the gfns the guest stored to since the previous one (or
    since logging began): from the scenario's ops alone."""
    out: list[set[int]] = []
    written: set[int] = set()
    for step in scenario.steps:
        op = step.op
        if op == "write":
            data = cast(Any, step)
            written |= {data.gfn + k * data.stride for k in range(data.count)}
        elif op in ("enable_dirty_log", "migrate_begin"):
            written = set()
        elif op in ("get_dirty_log", "migrate_round", "migrate_end"):
            out.append(written)
            written = set()
    return out


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_logs_only_written_pages(name: str) -> None:
    # §6.1 (ii), "dirty ⇒ written this iteration": it holds under modern for every workload, reads
    # included, because only writes mark pages (live-kernel note 1); and (i), no false negatives.
    scenario = load_scenario(name)
    sim = Simulation(scenario, make_policy("modern"), detail="summary")
    results = sim.run()
    assert [v for r in results for v in r.violations] == []
    logs = [r.dirty_log for r in results if r.dirty_log is not None]
    expected = written_since_harvest(scenario)
    assert len(logs) == len(expected)
    for got, wrote in zip(logs, expected, strict=True):
        assert set(got) == wrote


def test_one_gig_page_is_split_whole_and_recovered_whole() -> None:
    # §6.3 (T-SPLIT) on the one-gig-page lesson: right after migrate_begin enables logging, no huge page is
    # left and every one of the 262144 pages has its own read-only 4K spte; migrate_end disables logging
    # and recovery zaps the gigabyte's level-3 pointer with the 513 tables under it (§5.3).
    sim = Simulation(load_scenario("one-gig-page"), make_policy("modern"), detail="summary")
    while not sim.done:
        step = sim.step()
        assert step.violations == []
        if step.op["op"] == "migrate_begin":
            tables = [sp for sp in sim.kvm.active_mmu_pages.values() if sp.level == 1]
            assert sim.kvm.stat.lpages == 0
            assert len(tables) * 512 == 0x40000
            assert all(spte & 1 and not spte & W for sp in tables for spte in sp.spt)
        if step.op["op"] == "write" and step.op["gfn"] == 0x40123:
            assert step.fault_counts == {"fast": 1, "slow": 0}
    assert check_all(sim.kvm, step.index) == []
    assert sim.kvm.stat.mmu_shadow_zapped == 1 + 512
    assert [sp.level for sp in sim.kvm.active_mmu_pages.values()] == [4, 3]
    assert sim.migration.lost == []


def test_cow_large_spte_lesson_under_modern() -> None:
    # The lesson's 3.x claim (the slow path drops the large spte) does not hold: eager splitting already
    # split it at enable into 512 4K sptes without HW, W or MW (§5.2, copying permissions). The write then
    # fails the fast path (no HW, §3.9), and the slow path rebuilds that 4K spte writable after breaking COW:
    # nothing to drop, no flush. The read of 0x300 goes through its read-only 4K spte: not logged.
    states = walk(load_scenario("cow-large-spte"))
    write = next(step for step, _ in states if (step["op"]["op"], step["op"].get("gfn")) == ("write", 0x250))
    assert fault_rows(write) == [("slow", "not_locklessly_modifiable")]
    assert write["tlb_flushes"] == 0
    assert [e for e in write["events"] if e["name"] == "drop_large_spte"] == []
    read = next(step for step, _ in states if (step["op"]["op"], step["op"].get("gfn")) == ("read", 0x300))
    assert (read["fault_counts"], read["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    assert dirty_logs(states) == [[0x250, 0x260]]


def test_zap_all_lesson_under_modern() -> None:
    # After zap_all the slot is still logged: the write maps 4K and is logged, the read maps 4K read-only
    # and is not (live-kernel note 1).
    states = walk(load_scenario("zap-all"))
    assert dirty_logs(states) == [[0x250, 0x260], [0x270]]


def test_presets_agree_lesson_under_modern() -> None:
    # The 3.x presets agree on this lesson; modern differs only by the page that was only read (0x2c0).
    states = walk(load_scenario("presets-agree"))
    assert dirty_logs(states) == [[0x200, 0x280, 0x300, 0x380, 0x1002], [0x200, 0x1003]]
