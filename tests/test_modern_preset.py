"""The `modern` preset, the upstream TDP MMU of Linux 6.13 and later (kvm-mmu.md §5.7): the spec table's
later-kernel column, on the worked example, on the reads and writes of a logged slot, and on every built-in
lesson.

Expected values come from kvm-mmu.md: §5.1–5.3, §5.7 (the upstream audit) and §6.1/§6.3, with the 6.x spte
layout of §5.7's "spte encoding" row (conftest's LAYOUT_6X); none is copied from a run. The live-kernel
note at the top of the spec says why the earlier "reads are never logged" belief was wrong: the machine's
kernel emulated the guest, and its MMU never ran.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from conftest import LAYOUT_6X, SLOT_2M, load_scenario, make_scenario, spec_example, spte_at

from engine.invariants import check_all
from engine.policy import PRESET_DESCRIPTIONS, make_policy
from engine.result import result_json, step_json
from engine.scenario import Scenario, WriteStep, parse_scenario
from engine.simulation import Simulation
from engine.tdp_iter import spte_to_child_sp
from scenarios import builtin_names

L6 = LAYOUT_6X
W, PS, A, D, HW, MW = L6.W, L6.PS, L6.A, L6.D, L6.HW, L6.MW
# §7.2 step 1's 2M leaf as 6.x make_spte builds it: the same permissions, and D (§5.7 "D bit").
LARGE_RW = L6.leaf(0x80000, W | PS | A | D | HW | MW)


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


def events(step: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in step["events"] if e["name"] == name]


def l1_leaves(state: dict[str, Any]) -> dict[int, int]:
    return {
        s["index"]: int(s["value"], 16)
        for s in state["sptes"]
        if s["leaf"] and (s["level"], s["sp_gfn"]) == (1, 0x200)
    }


def test_the_description_names_what_modern_is_and_leaves_out() -> None:
    text = PRESET_DESCRIPTIONS["modern"]
    for named in ("6.13", "TDP MMU", "in place", "no prefetch", "faulting gfn", "6.x spte layout"):
        assert named in text, named
    for left_out in ("RCU", "rmaps", "NX huge pages", "PML", "dirty ring", "manual clear"):
        assert left_out.lower() in text.lower(), left_out


# --- the worked example (§7), as the spec's literal ioctls -----------------------------------------------

READ_0X210, WRITE_0X2A0, ENABLE, READ_0X2C0, WRITE_0X250 = 0, 1, 2, 3, 4
WRITE_0X260, WRITE_0X2C0, ROUND_1, REWRITE_0X250, WRITE_0X300, ROUND_2 = 5, 6, 7, 8, 9, 10
DISABLE, REREAD, REWRITE_0X2A0 = 11, 12, 13


@pytest.fixture(scope="module")
def worked() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    data = spec_example()
    # §5.7 "disable logging", and §6.3 ("after disable and repopulate, the counts equal the populated
    # counts"): a read and a write in the range once logging is off.
    data["steps"] += [
        {"op": "disable_dirty_log", "slot": 1},
        {"op": "read", "gfn": "0x210"},
        {"op": "write", "gfn": "0x2a0"},
    ]
    return walk(parse_scenario(data))


def test_worked_example_logs_every_written_page(worked: States) -> None:
    # §7.2 steps 7 and 9, as (a) and (c) log them: every write after logging began is a fault that logs
    # its page (§5.2); the read of 0x2c0 takes no fault (below), and 0x2c0 is written in step 6 anyway.
    assert dirty_logs(worked) == [[0x250, 0x260, 0x2C0], [0x250, 0x300]]


def test_worked_example_step1_maps_the_2m_range_writable_and_dirty(worked: States) -> None:
    # Logging is off: a read maps the 2M range writable (§7.2 step 1), built dirty by 6.x make_spte (§5.7
    # "D bit of sptes built writable"); the store of step 2 then takes no exit and finds D already set.
    step, state = worked[READ_0X210]
    assert value(state, 2, 0, 1) == LARGE_RW
    assert (step["marked_dirty"], step["tlb_flushes"]) == ([], 0)
    assert state["stats"]["pf_taken"] == state["stats"]["pf_fixed"] == 1
    write, _ = worked[WRITE_0X2A0]
    assert write["fault_counts"] == {"fast": 0, "slow": 0}
    assert write["spte_changes"] == []


def test_worked_example_enable_splits_then_write_protects(
    worked: States,
) -> None:
    # §5.1 steps 2-4 and §5.2: the 2M spte (R W X PS A D HW MW) becomes 512 4K sptes with its bits, PS
    # cleared, pfn 0x80000 + i; write protection then clears W on all of them; pages_2m 0, pages_4k 512;
    # one flush.
    step, state = worked[ENABLE]
    assert l1_leaves(state) == {i: L6.leaf(0x80000 + i, A | D | HW | MW) for i in range(512)}
    stats = state["stats"]
    assert (stats["lpages"], stats["pages_2m"], stats["pages_4k"]) == (0, 0, 512)
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
    # The fast path sets W and nothing else: D came with the split.
    assert l1_leaves(worked[WRITE_0X2C0][1])[0x50] == L6.leaf(0x80050, W | A | D | HW | MW)
    # 6.x counts every fixed fault in pf_fixed, and the fast ones in pf_fast too (§5.7 "stats").
    stats = worked[WRITE_0X300][1]["stats"]
    assert (stats["pf_taken"], stats["pf_fixed"], stats["pf_fast"], stats["pf_spurious"]) == (6, 6, 5, 0)


def test_worked_example_gets_write_protect_and_flush(
    worked: States,
) -> None:
    # §5.1: GET touches only 4K leaves, clears W (HW, MW kept), flushes after unlock when bits were set.
    for index in (ROUND_1, ROUND_2):
        step, state = worked[index]
        assert step["tlb_flushes"] == 1
        assert all(not value & W and value & HW and value & MW for value in l1_leaves(state).values())
    flushes = events(worked[ROUND_1][0], "kvm_flush_remote_tlbs")
    assert [(e["caller"], e["under_mmu_lock"]) for e in flushes] == [("kvm_vm_ioctl_get_dirty_log", False)]


def test_worked_example_disable_recovers_the_2m_page_in_place(
    worked: States,
) -> None:
    # §5.7 "disable logging" (6.13+): the table becomes a 2M leaf at once, built from its first present
    # leaf, gfn 0x200 (never written since the split, so read-only: R X A D HW MW), with PS set and the
    # address cut to the 2M boundary; the table goes; one flush for the memslot.
    step, state = worked[DISABLE]
    recovered = L6.leaf(0x80000, PS | A | D | HW | MW)
    assert value(state, 2, 0, 1) == recovered
    assert [s for s in state["sptes"] if s["leaf"] and s["level"] == 1] == []
    assert [e["caller"] for e in events(step, "kvm_flush_remote_tlbs")] == ["kvm_mmu_recover_huge_pages"]
    assert events(step, "kvm_mmu_zap_collapsible_sptes") == []
    stats = state["stats"]
    assert (stats["lpages"], stats["pages_2m"], stats["pages_4k"]) == (1, 1, 0)  # §6.3: as populated
    # A read anywhere in the range goes through the recovered leaf: no fault.
    reread, _ = worked[REREAD]
    assert reread["fault_counts"] == {"fast": 0, "slow": 0}
    # The next write is a fast fault on it: the guard acts only while logging (§5.1), W is set, nothing is
    # logged (no bitmap), and no flush (a permission increase).
    rewrite, final = worked[REWRITE_0X2A0]
    assert fault_rows(rewrite) == [("fast", "fixed")]
    assert (rewrite["marked_dirty"], rewrite["tlb_flushes"]) == ([], 0)
    assert value(final, 2, 0, 1) == recovered | W


# --- reads and writes of a logged slot (§5.7, first row) --------------------------------------------------


def test_a_read_that_faults_on_a_logged_page_is_logged() -> None:
    # §5.7: nothing maps the range when logging starts, so each read faults; the host page is writable, so
    # make_spte(ACC_ALL) builds a writable, dirty 4K spte and marks the page (as 3.x's set_spte, §3.10).
    steps: list[dict[str, Any]] = [
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "read", "gfn": "0x210", "count": 4, "stride": "0x40"},
        {"op": "get_dirty_log", "slot": 1},
    ]
    states = walk(make_scenario([SLOT_2M], steps))
    read, after_read = states[1]
    gfns = [0x210, 0x250, 0x290, 0x2D0]
    assert read["fault_counts"] == {"fast": 0, "slow": 4}
    assert read["marked_dirty"] == gfns
    assert l1_leaves(after_read) == {
        g - 0x200: L6.leaf(0x80000 + g - 0x200, W | A | D | HW | MW) for g in gfns
    }
    get, after_get = states[2]
    assert get["dirty_log"] == gfns
    assert get["tlb_flushes"] == 1
    # The GET write-protects them like any written page (§3.6, §5.1): W goes, HW and MW stay.
    assert l1_leaves(after_get) == {g - 0x200: L6.leaf(0x80000 + g - 0x200, A | D | HW | MW) for g in gfns}


def test_a_read_that_hits_a_present_spte_is_not_logged() -> None:
    # The 2M leaf a read built before logging is split at enable into 512 present read-only 4K sptes (§5.2):
    # the same reads take no fault, so nothing builds a spte and nothing marks a page.
    steps: list[dict[str, Any]] = [
        {"op": "read", "gfn": "0x2f0"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "read", "gfn": "0x210", "count": 4, "stride": "0x40"},
        {"op": "get_dirty_log", "slot": 1},
    ]
    states = walk(make_scenario([SLOT_2M], steps))
    read, _ = states[2]
    assert read["fault_counts"] == {"fast": 0, "slow": 0}
    assert (read["marked_dirty"], read["spte_changes"]) == ([], [])
    get, after = states[3]
    assert (get["dirty_log"], get["tlb_flushes"]) == ([], 0)  # §3.6: no bit, no flush
    for gfn in (0x210, 0x250, 0x290, 0x2D0):
        assert value(after, 1, 0x200, gfn - 0x200) == L6.leaf(0x80000 + gfn - 0x200, A | D | HW | MW)


def test_a_write_storm_logs_every_page_and_a_rewrite_the_rewritten() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "write", "gfn": "0x200"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x200", "count": 512},
        {"op": "get_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x200", "count": 256},
        {"op": "get_dirty_log", "slot": 1},
    ]
    states = walk(make_scenario([SLOT_2M], steps))
    # §5.2: after the split every write is a fast fault on its own 4K spte, and logs its page.
    assert states[2][0]["fault_counts"] == {"fast": 512, "slow": 0}
    assert dirty_logs(states) == [list(range(0x200, 0x400)), list(range(0x200, 0x300))]


def test_two_vcpus_log_exactly_their_writes() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "read", "gfn": "0x210", "vcpu": 0},
        {"op": "read", "gfn": "0x2a0", "vcpu": 1},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x211", "vcpu": 0},
        {"op": "write", "gfn": "0x300", "vcpu": 1},
        {"op": "get_dirty_log", "slot": 1},
    ]
    assert dirty_logs(walk(make_scenario([SLOT_2M], steps, vcpus=2))) == [[0x211, 0x300]]


def test_disable_reenable_write_logs_only_that_write() -> None:
    # Disabling recovers the 2M leaf in place (§5.7); enabling again splits it again (§5.2), so the write
    # after it is a fast fault on its own 4K spte and the round logs it alone.
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
    states = walk(make_scenario([SLOT_2M], steps))
    assert dirty_logs(states) == [[0x250], [0x201]]
    assert fault_rows(states[6][0]) == [("fast", "fixed")]


# --- every built-in lesson ----------------------------------------------------------------------------------

# A gigabyte split to 4K is 262144 sptes: its per-step state dumps are left to the engine's own checker.
WHOLE_STATE_EVERY_STEP = [name for name in builtin_names() if name != "one-gig-page"]


@pytest.mark.parametrize("name", WHOLE_STATE_EVERY_STEP)
def test_every_builtin_keeps_the_invariants_after_every_step(name: str) -> None:
    walk(load_scenario(name))


def touched_since_harvest(scenario: Scenario) -> list[tuple[set[int], set[int]]]:
    """For each step that returns a dirty log, the gfns the guest stored to and the gfns it loaded from
    since the previous one (or since logging began): from the scenario's ops alone."""
    out: list[tuple[set[int], set[int]]] = []
    written: set[int] = set()
    read: set[int] = set()
    for step in scenario.steps:
        op = step.op
        if op in ("write", "read"):
            data = cast(Any, step)
            (written if op == "write" else read).update(data.gfn + k * data.stride for k in range(data.count))
        elif op in ("enable_dirty_log", "migrate_begin"):
            written, read = set(), set()
        elif op in ("get_dirty_log", "migrate_round", "migrate_end"):
            out.append((written, read))
            written, read = set(), set()
    return out


# Under shadow paging more is logged than the scenario touches, by design: the guest's page-table pages
# whose A/D bits KVM sets, and pages a sync makes writable (shadow-mmu.md §4, S2b and S4; tested in
# tests/test_shadow_paging.py).
TDP_LESSONS = [name for name in builtin_names() if load_scenario(name).vm.mmu == "tdp"]


@pytest.mark.parametrize("name", TDP_LESSONS)
def test_every_builtin_logs_every_written_page_and_only_what_was_touched(name: str) -> None:
    # §6.1 (i), no false negatives: every page written since the last harvest is logged. §6.1 (ii) holds
    # only relaxed, "dirty ⇒ written or read through a new mapping": a read that faults on a logged slot
    # maps the page writable and logs it (§5.7, first row), so a logged page was written or read.
    scenario = load_scenario(name)
    sim = Simulation(scenario, make_policy("modern"), detail="summary")
    results = sim.run()
    assert [v for r in results for v in r.violations] == []
    logs = [r.dirty_log for r in results if r.dirty_log is not None]
    expected = touched_since_harvest(scenario)
    assert len(logs) == len(expected)
    for got, (wrote, read) in zip(logs, expected, strict=True):
        assert wrote <= set(got)
        assert set(got) <= wrote | read


def test_one_gig_page_is_split_whole_and_recovered_whole() -> None:
    # §6.3 (T-SPLIT) on the one-gig-page lesson: right after migrate_begin enables logging, no huge page is
    # left and every one of the 262144 pages has its own read-only 4K spte; migrate_end disables logging
    # and recovery replaces the gigabyte's level-3 pointer in place by a 1G leaf (§5.7 "disable logging"),
    # freeing the 513 tables under it: one level-2 table and its 512 level-1 tables.
    sim = Simulation(load_scenario("one-gig-page"), make_policy("modern"), detail="summary")
    while not sim.done:
        step = sim.step()
        assert step.violations == []
        if step.op.op == "migrate_begin":
            tables = [sp for sp in sim.kvm.active_mmu_pages.values() if sp.level == 1]
            stats = sim.kvm.stats()
            assert (stats["lpages"], stats["pages_1g"], stats["pages_2m"]) == (0, 0, 0)
            assert stats["pages_4k"] == len(tables) * 512 == 0x40000
            assert all(spte & 1 and not spte & W for sp in tables for spte in sp.spt)
        if isinstance(step.op, WriteStep) and step.op.gfn == 0x40123:
            assert step.fault_counts == {"fast": 1, "slow": 0}
    assert check_all(sim.kvm, step.index) == []
    assert sim.kvm.stat.mmu_shadow_zapped == 1 + 512
    assert [sp.level for sp in sim.kvm.active_mmu_pages.values()] == [4, 3]
    stats = sim.kvm.stats()
    assert (stats["lpages"], stats["pages_1g"], stats["pages_2m"], stats["pages_4k"]) == (1, 1, 0, 0)
    # The first present leaf is gfn 0x40000's, which no write touched after the split: read-only.
    root_l3 = spte_to_child_sp(sim.kvm, sim.kvm.root.spt[0])
    assert root_l3.spt[1] == L6.leaf(0x1000000, PS | A | D | HW | MW)
    assert sim.migration.lost == []


def test_cow_large_spte_lesson_under_modern() -> None:
    # Slot 1's host page is shared copy-on-write (host_writable false, host_cow "copy" by default). The
    # read maps the 2M range without HW, W or MW (§1.3: map_writable false); enabling logging splits it
    # into 512 4K sptes with the same permissions (§5.2).
    states = walk(load_scenario("cow-large-spte"))
    first_read = states[0][1]
    assert value(first_read, 2, 0, 1) == L6.leaf(0x80000, PS | A)
    enabled = next(st for step, st in states if step["op"] == {"op": "enable_dirty_log", "slot": 1})
    assert l1_leaves(enabled) == {i: L6.leaf(0x80000 + i, A) for i in range(512)}
    # The read of 0x2c0 goes through its present 4K spte.
    read = next(step for step, _ in states if (step["op"]["op"], step["op"].get("gfn")) == ("read", 0x2C0))
    assert (read["fault_counts"], read["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    # §5.8: the write fails the fast path (no HW, §3.9) and copies the host page; the copy fires the mmu
    # notifier, which drops every spte of the 2M host page (the 512 4K sptes) with one flush, and the fault
    # in flight maps nothing; the retried fault (not present now, so not fast) maps 0x250 writable and
    # dirty and logs it. Two slow faults.
    write, after_write = next(
        (step, st) for step, st in states if (step["op"]["op"], step["op"].get("gfn")) == ("write", 0x250)
    )
    assert fault_rows(write) == [("slow", "not_locklessly_modifiable"), ("slow", None)]
    notified = events(write, "kvm_mmu_notifier_invalidate_range_start")
    assert [(e["gfn_start"], e["gfn_end"], e["dropped"], e["flush"]) for e in notified] == [
        (0x200, 0x400, 512, True)
    ]
    assert len(events(write, "mmu_notifier_retry")) == 1
    assert [e["caller"] for e in events(write, "kvm_flush_remote_tlbs")] == [
        "kvm_mmu_notifier_invalidate_range_start"
    ]
    assert events(write, "drop_large_spte") == []
    assert write["marked_dirty"] == [0x250]
    assert l1_leaves(after_write) == {0x50: L6.leaf(0x80050, W | A | D | HW | MW)}
    # The host page is writable now: the read of 0x300 faults on an empty entry and maps writable and
    # logged (§5.7, first row), as the write of 0x260 does.
    reread = next(step for step, _ in states if (step["op"]["op"], step["op"].get("gfn")) == ("read", 0x300))
    assert (reread["fault_counts"], reread["marked_dirty"]) == ({"fast": 0, "slow": 1}, [0x300])
    # Slot 2's host page is owned alone (host_cow "reuse"): made writable in place, no notifier, so its
    # split 4K sptes keep their HW-less bits but 0x450's, which the slow path rebuilds writable; the read
    # of 0x500 hits a present spte and is not logged (tests/test_library.py has the lesson step by step).
    assert dirty_logs(states) == [[0x250, 0x260, 0x300], [0x450, 0x460]]


def test_zap_all_lesson_under_modern() -> None:
    # Enabling splits both 2M leaves (§5.2); the writes are fast faults that log their pages. After zap_all
    # the slot is still logged: the write and the read each fault, map a writable 4K spte and log their
    # page (§5.7, first row).
    states = walk(load_scenario("zap-all"))
    assert dirty_logs(states) == [[0x250, 0x260], [0x270, 0x420]]
    zap = next(step for step, _ in states if step["op"]["op"] == "zap_all")
    assert events(zap, "kvm_mmu_invalidate_zap_all_pages") == []  # 6.x keeps kvm_mmu_zap_all
    assert zap["tlb_flushes"] == 1


def test_presets_agree_lesson_under_modern() -> None:
    # No large spte exists before logging starts, so modern logs what the 3.x presets log (§7.3): the five
    # first touches of slot 1 under logging (the read of 0x2c0 too, §5.7) and the fast fault on 0x1002,
    # then the two rewrites.
    states = walk(load_scenario("presets-agree"))
    assert dirty_logs(states) == [[0x200, 0x280, 0x2C0, 0x300, 0x380, 0x1002], [0x200, 0x1003]]
    for name in ("zap", "lazy-buggy", "lazy"):
        sim = Simulation(load_scenario("presets-agree"), make_policy(name), detail="summary")
        assert [r.dirty_log for r in sim.run() if r.dirty_log is not None] == dirty_logs(states)


def test_todays_kernel_lesson_under_modern() -> None:
    # §5.2 at enable; the writes are fast faults; the read of 0x410, in the range nothing mapped, faults
    # and is logged (§5.7, first row). Disabling recovers both 2M ranges in place, with one flush (§5.7):
    # 0x200's from its first leaf (gfn 0x200, read-only since the split), 0x400's from its only leaf
    # (0x410, read-only since the GET), its address cut to 0x80200. The write of 0x250 is then a fast fault
    # on the recovered 2M leaf, with nothing to log.
    states = walk(load_scenario("todays-kernel"))
    assert dirty_logs(states) == [[0x250, 0x260, 0x410]]
    disable, disabled = next((step, st) for step, st in states if step["op"]["op"] == "disable_dirty_log")
    assert value(disabled, 2, 0, 1) == L6.leaf(0x80000, PS | A | D | HW | MW)
    assert value(disabled, 2, 0, 2) == L6.leaf(0x80200, PS | A | D | HW | MW)
    assert [e["caller"] for e in events(disable, "kvm_flush_remote_tlbs")] == ["kvm_mmu_recover_huge_pages"]
    last, final = [(step, st) for step, st in states if step["op"]["op"] == "write"][-1]
    assert last["op"]["gfn"] == 0x250
    assert fault_rows(last) == [("fast", "fixed")]
    assert last["marked_dirty"] == []
    assert value(final, 2, 0, 1) == L6.leaf(0x80000, W | PS | A | D | HW | MW)
