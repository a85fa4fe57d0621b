"""The built-in lesson library (`scenarios/*.json`): every lesson runs clean where the kernel is correct,
says what it claims, and is written as a lesson.

Three groups of tests:

- every built-in under every preset: `zap` and `lazy` never violate an invariant (spec "Acceptance"), also
  by the whole-state checker; `lazy-buggy` may, which is the point;
- one group per lesson, asserting the claims its description and notes make. Each expected value is
  derived from kvm-mmu.md (the section is named beside it), not copied from a run; the steps are found by
  their op, so inserting a note never shifts an expectation;
- the library as a whole: at least ten lessons, each with a title, a description that says what to watch,
  note steps, and only commit ids that the spec names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest
from conftest import PRESET_NAMES, load_scenario, per_preset, run_scenario, scenario_dict

from engine.invariants import INVARIANTS, check_all
from engine.policy import make_policy
from engine.result import result_json, step_json
from engine.scenario import NoteStep, parse_scenario
from engine.simulation import Simulation
from engine.tlb import TlbEntry
from scenarios import builtin_names, builtin_scenarios, load_builtin_text

# The spec lives beside the repository in the development tree; the commit-id test reads it when it is there.
# The commits kvm-mmu.md names (§0 sources, §4 history), the only ones a lesson may cite.
SPEC_COMMITS = (
    "caf6900f2d8aaebe404c976753f6813ccd31d95e",  # the first "KVM: MMU: lazily drop large spte"
    "c126d94f2c90ed9daee24a94f1c67aff7e9bf387",  # the merged "KVM: MMU: lazily drop large spte" (3.16)
    "198c74f43f0f5473f99967aead30ddc622804bc1",  # "flush tlb out of mmu lock when write-protect the sptes"
    "404381c5839d67aa0c275ad1da96ef3d3928ca2c",  # "drop read-only large sptes when creating lower level ..."
    "3ea3b7fa9af067982f34b6745584558821eea79d",  # "kvm: mmu: lazy collapse small sptes into large sptes"
    "6b73a9606",  # the revert of caf6900f, by its short id only
)
CORRECT = ("zap", "lazy")  # the kernels that must never violate an invariant (spec "Acceptance")
# `modern` must keep the invariants too. Where a lesson's 3.x claim is one later kernels changed (eager
# splitting, recovery when logging stops, read faults that mark nothing), the lesson's **modern** bullet
# says what happens instead, and a test of its own below asserts it.
INVARIANTS_HOLD = (*CORRECT, "modern")
MODERN_SPLITS = {"modern": "eager splitting maps the range with 4K sptes at enable (§5.2): its own test"}
MODERN_RECOVERS = {"modern": "recovery zaps the 4K table when logging stops (§5.3): its own test"}
MODERN_READS = {"modern": "a read under logging marks nothing (live-kernel note 1): its own test"}
# One gigabyte split to 4K is 262144 sptes in every state this module keeps per step: its own test runs it
# once, in summary detail.
MODERN_GIGABYTE = {"modern": "262144 4K sptes per kept state after eager splitting: its own test"}
WORKED = "worked-example"
W_BIT = 0x2


# --- running a lesson ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class After:
    """What the state looked like right after one step: the step's result (contract §4, full detail), the
    `final` object as if the scenario ended there, and each vCPU's TLB entries (with the cached dirty flag,
    which the result leaves out)."""

    step: dict[str, Any]
    state: dict[str, Any]
    tlb: dict[int, list[TlbEntry]]


@functools.cache
def walk(name: str, preset: str) -> tuple[After, ...]:
    """Run built-in `name` under `preset` one step at a time, keeping the state after every step."""
    sim = Simulation(load_scenario(name), make_policy(preset), detail="full")
    out = []
    while not sim.done:
        step = sim.step()
        state = cast(dict[str, Any], result_json(sim, [])["final"])
        tlb = {vcpu.id: vcpu.tlb.entries() for vcpu in sim.kvm.vcpus}
        out.append(After(step_json(step), state, tlb))
    return tuple(out)


@functools.cache
def result(name: str, preset: str) -> dict[str, Any]:
    """The whole result (contract §4, summary detail) of built-in `name` under `preset`."""
    return run_scenario(name, preset, detail="summary")[2]


def _matches(op: dict[str, Any], fields: dict[str, Any]) -> bool:
    return all(op.get(key) == value for key, value in fields.items())


def at(name: str, preset: str, op: str, nth: int = 0, **fields: Any) -> After:
    """The state after the `nth` step (from 0) whose op is `op` with these field values."""
    found = [a for a in walk(name, preset) if _matches(a.step["op"], {"op": op, **fields})]
    assert len(found) > nth, f"{name}: no step #{nth} {op} {fields}"
    return found[nth]


def logs(name: str, preset: str) -> list[list[int]]:
    """The dirty logs in order: every step that returned one (GET_DIRTY_LOG and the migrate_* steps)."""
    return [a.step["dirty_log"] for a in walk(name, preset) if a.step["dirty_log"] is not None]


def events(after: After, name: str) -> list[dict[str, Any]]:
    return [e for e in after.step["events"] if e["name"] == name]


def fast_results(after: After) -> list[str | None]:
    return [f["fast_result"] for f in after.step["faults"]]


def violated(after: After, invariant: str) -> list[int]:
    return sorted(v["gfn"] for v in after.step["violations"] if v["invariant"] == invariant)


def leaves(after: After) -> list[tuple[int, int, bool]]:
    """The present leaves after a step as (level, first gfn, writable)."""
    return [(s["level"], s["gfn"], s["writable"]) for s in after.state["sptes"] if s["leaf"]]


def before(name: str, preset: str, after: After) -> After:
    """The state after the step before `after`."""
    states = walk(name, preset)
    return states[states.index(after) - 1]


def faults_after(name: str, preset: str, op: str, **fields: Any) -> dict[str, int]:
    """Fast and slow faults summed over every step after the first step matching (op, fields)."""
    states = walk(name, preset)
    start = states.index(at(name, preset, op, **fields))
    total = {"fast": 0, "slow": 0}
    for a in states[start + 1 :]:
        for path in total:
            total[path] += a.step["fault_counts"][path]
    return total


def gfns(first: int, count: int, stride: int = 1) -> list[int]:
    return [first + k * stride for k in range(count)]


# --- every built-in, every preset ------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_runs_and_only_lazy_buggy_breaks_invariants(name: str, preset: str) -> None:
    sim, steps, out = run_scenario(name, preset, detail="summary")
    assert len(steps) == len(load_scenario(name).steps)
    found = {v["invariant"] for v in out["final"]["violations"]}
    assert found <= set(INVARIANTS)
    if preset in INVARIANTS_HOLD:
        # Spec "Acceptance": after every step the §3.13 invariants hold for zap and lazy. The incremental
        # checker saw no violation; the whole-state checker must agree at the end.
        assert out["final"]["violations"] == []
        assert check_all(sim.kvm, len(steps) - 1) == []


# --- read-mostly-logging ----------------------------------------------------------------------------------

READ_MOSTLY = "read-mostly-logging"
RANGE_A_READS = gfns(0x200, 8, 0x40)
RANGE_B_READS_BEFORE = gfns(0x400, 4, 0x20)
RANGE_B_READS_AFTER = gfns(0x500, 4, 0x20)


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §3.5 (3.14): both 2M sptes were writable (a TDP read fault maps writable, §3.10), so both are
            # zapped; §3.8: every later access maps 4K; §3.10: each of them, read or write, marks its page.
            "zap": {
                "slow": 8 + 4 + 1 + 4,
                "log": sorted(RANGE_A_READS + RANGE_B_READS_BEFORE + [0x480] + RANGE_B_READS_AFTER),
                "lost": [],
            },
            # §3.5 (3.16): the 2M sptes stay read-only, so the 12 reads before the write take no fault (§7.2
            # step 4); §3.9's guard sends the write to the slow path, which drops the 2M spte (§3.2); the 4
            # reads after it meet not-present entries and mark their pages (§3.10, §7.2 step 5 (c)).
            "lazy": {"slow": 1 + 4, "log": [0x480, *RANGE_B_READS_AFTER], "lost": []},
            # §4.2: the fast path sets W on the 2M spte and marks the sp-derived gfn, 0x400; nothing else
            # faults, and the write to 0x480 is never reported.
            "lazy-buggy": {"slow": 0, "log": [0x400], "lost": [0x480]},
            # §5.2: both 2M sptes are split to 4K at enable, so no read faults and the write is a fast
            # fault on a 4K spte; only the written page is logged (§6.1 (ii), live-kernel note 1).
            "modern": {"slow": 0, "log": [0x480], "lost": []},
        }
    ),
)
def test_read_mostly_logging_saves_read_faults_and_spurious_dirty_pages(
    preset: str, expected: dict[str, Any]
) -> None:
    assert faults_after(READ_MOSTLY, preset, "enable_dirty_log")["slow"] == expected["slow"]
    get = at(READ_MOSTLY, preset, "get_dirty_log")
    assert get.step["dirty_log"] == expected["log"]
    assert violated(get, "written_not_logged") == expected["lost"]


def test_read_mostly_logging_zap_reports_pages_that_were_only_read() -> None:
    # §3.10: "a READ fault on TDP produces a writable spte and marks the page dirty"; §6.1 (ii).
    reads = at(READ_MOSTLY, "zap", "read", gfn=0x200, count=8, stride=0x40)
    assert reads.step["marked_dirty"] == RANGE_A_READS
    assert {(1, gfn, True) for gfn in RANGE_A_READS} <= set(leaves(reads))
    spurious = set(at(READ_MOSTLY, "zap", "get_dirty_log").step["dirty_log"]) - {0x480}
    assert len(spurious) == 16


# Zap has no large spte left to read through: its reads are the test above.
@pytest.mark.parametrize("preset", ["lazy", "lazy-buggy"])
def test_read_mostly_logging_lazy_reads_through_the_read_only_large_spte(preset: str) -> None:
    enabled = at(READ_MOSTLY, preset, "enable_dirty_log")
    # §3.5 (3.16): both large sptes stay present, read-only, in the level-2 rmaps.
    assert leaves(enabled) == [(2, 0x200, False), (2, 0x400, False)]
    reads = at(READ_MOSTLY, preset, "read", gfn=0x200, count=8, stride=0x40)
    assert reads.step["fault_counts"] == {"fast": 0, "slow": 0}
    assert reads.step["marked_dirty"] == []


def test_read_mostly_logging_lazy_drops_only_the_written_range() -> None:
    write = at(READ_MOSTLY, "lazy", "write", gfn=0x480)
    # §3.9 (3.16 guard) then §3.2: bail_large, drop_large_spte with its flush.
    assert fast_results(write) == ["bail_large"]
    assert [e["caller"] for e in events(write, "kvm_flush_remote_tlbs")] == ["drop_large_spte"]
    # The first range was never written: its read-only 2M spte survives to the end.
    final = walk(READ_MOSTLY, "lazy")[-1]
    assert (2, 0x200, False) in leaves(final)
    assert final.state["stats"]["lpages"] == 1


def test_read_mostly_logging_modern_splits_and_reads_mark_nothing() -> None:
    # §5.2: right after enabling no large spte is left; both 2M ranges are 512 read-only 4K leaves each.
    enabled = at(READ_MOSTLY, "modern", "enable_dirty_log")
    assert enabled.state["stats"]["lpages"] == 0
    small = [leaf for leaf in leaves(enabled) if leaf[0] == 1]
    assert len(small) == 2 * 512 and not any(writable for _, _, writable in small)
    # So every read goes through a 4K spte without an exit, and the write is a fast fault (§5.2).
    for gfn, count, stride in ((0x200, 8, 0x40), (0x400, 4, 0x20), (0x500, 4, 0x20)):
        reads = at(READ_MOSTLY, "modern", "read", gfn=gfn, count=count, stride=stride)
        assert (reads.step["fault_counts"], reads.step["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    assert fast_results(at(READ_MOSTLY, "modern", "write", gfn=0x480)) == ["fixed"]


# --- write-storm-2m ---------------------------------------------------------------------------------------

STORM = "write-storm-2m"
EVERY_EIGHTH = gfns(0x200, 64, 8)


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §3.5 (3.14) zapped the 2M spte: 512 not-present faults, never fast (§3.9 needs PRESENT), each
            # marking its page (§3.10); no flush on the way (§3.11).
            "zap": {"storm": {"fast": 0, "slow": 512}, "flushes": 0, "log": gfns(0x200, 512), "lost": []},
            # §3.9's guard: the first write bails and the slow path drops the read-only 2M spte with one flush
            # (§3.2, §3.11); the other 511 meet not-present entries, as under zap.
            "lazy": {"storm": {"fast": 0, "slow": 512}, "flushes": 1, "log": gfns(0x200, 512), "lost": []},
            # §4.2: one fast fault sets W on the 2M spte (no flush: a permission increase, §3.11) and marks
            # 0x200 only; the other 511 stores take no exit and are lost.
            "lazy-buggy": {
                "storm": {"fast": 1, "slow": 0},
                "flushes": 0,
                "log": [0x200],
                "lost": gfns(0x201, 511),
            },
            # §5.2: the storm meets 512 read-only 4K sptes, each fixed by the fast path (no flush, §3.11);
            # live-kernel note 3: all 512 logged.
            "modern": {"storm": {"fast": 512, "slow": 0}, "flushes": 0, "log": gfns(0x200, 512), "lost": []},
        }
    ),
)
def test_write_storm_one_fast_fault_against_512_slow_ones(preset: str, expected: dict[str, Any]) -> None:
    storm = at(STORM, preset, "write", gfn=0x200, count=512)
    assert storm.step["fault_counts"] == expected["storm"]
    assert storm.step["tlb_flushes"] == expected["flushes"]
    first_get = at(STORM, preset, "get_dirty_log", nth=0)
    assert first_get.step["dirty_log"] == expected["log"]
    assert violated(first_get, "written_not_logged") == expected["lost"]


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §3.6 left the 4K sptes read-only with HW and MW: every rewrite is a fast fault (§3.9), and the
            # second GET returns exactly the rewritten pages (live-kernel note 3, at a smaller count).
            "zap": {"rewrite": {"fast": 64, "slow": 0}, "log": EVERY_EIGHTH, "lost": []},
            "lazy": {"rewrite": {"fast": 64, "slow": 0}, "log": EVERY_EIGHTH, "lost": []},
            # §3.6 / §4.2 step 5: GET only re-protects level-1 rmaps, so the 2M spte stays writable: no exit,
            # nothing logged, all 64 rewrites lost (0x200 included: its bit was harvested by the first GET).
            "lazy-buggy": {"rewrite": {"fast": 0, "slow": 0}, "log": [], "lost": EVERY_EIGHTH},
            "modern": {"rewrite": {"fast": 64, "slow": 0}, "log": EVERY_EIGHTH, "lost": []},
        }
    ),
)
def test_write_storm_rewrites_after_get_dirty_log(preset: str, expected: dict[str, Any]) -> None:
    rewrite = at(STORM, preset, "write", gfn=0x200, count=64, stride=8)
    assert rewrite.step["fault_counts"] == expected["rewrite"]
    second_get = at(STORM, preset, "get_dirty_log", nth=1)
    assert second_get.step["dirty_log"] == expected["log"]
    assert violated(second_get, "written_not_logged") == expected["lost"]


@pytest.mark.parametrize(
    ("preset", "expected"),
    # After the storm: a level-1 table of 512 writable 4K leaves (§7.2 step 5 (a)/(c)), or the one writable
    # 2M leaf of §7.2 step 5 (b).
    per_preset({"zap": (512, 0), "lazy": (512, 0), "lazy-buggy": (0, 1), "modern": (512, 0)}),
)
def test_write_storm_leaves_a_table_or_one_writable_large_spte(
    preset: str, expected: tuple[int, int]
) -> None:
    storm = at(STORM, preset, "write", gfn=0x200, count=512)
    small = [leaf for leaf in leaves(storm) if leaf[0] == 1]
    assert len(small) == expected[0] and all(writable for _, _, writable in small)
    assert storm.state["stats"]["lpages"] == expected[1]
    if expected[1]:
        assert leaves(storm) == [(2, 0x200, True)]


# --- one-gig-page -----------------------------------------------------------------------------------------

GIG = "one-gig-page"
# The writes after migrate_begin: seven before the round, one before migrate_end.
GIG_ROUND = [0x40123, *gfns(0x48000, 6, 0x6000)]
GIG_END = [0x7FFFE]
GIG_WRITES = GIG_ROUND + GIG_END


@pytest.mark.parametrize(
    ("preset", "_"), per_preset(dict.fromkeys(("zap", "lazy-buggy", "lazy")), MODERN_GIGABYTE)
)
def test_one_gig_page_is_mapped_by_one_level_3_leaf(preset: str, _: None) -> None:
    # §1.2: a level-3 leaf maps 512^2 pages; §3.8: mapping_level gives 3 for a 1G hugetlbfs page when the
    # VM allows 1G pages and the slot is aligned. 0x40000 >> 18 = index 1 of the level-3 sp.
    first = at(GIG, preset, "read", gfn=0x40000)
    assert leaves(first) == [(3, 0x40000, True)]
    assert first.step["faults"][0]["level"] == 3
    assert scenario_dict(GIG)["memslots"][0]["npages"] == 512**2 == 262_144


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §3.5 / §3.9 / §3.10 as for 2M, one level up: every write maps a 4K page and is logged.
            "zap": {"first": ("slow", None, 1), "round": GIG_ROUND, "end": GIG_END, "lost": []},
            "lazy": {"first": ("slow", "bail_large", 1), "round": GIG_ROUND, "end": GIG_END, "lost": []},
            # §4.2 with a level-3 sp: kvm_mmu_page_get_gfn gives 0 + 1 × 512^2 = 0x40000, and every page the
            # guest writes during the migration is lost.
            "lazy-buggy": {"first": ("fast", "fixed", 3), "round": [0x40000], "end": [], "lost": GIG_WRITES},
        },
        MODERN_GIGABYTE,
    ),
)
def test_one_gig_page_loses_every_written_page(preset: str, expected: dict[str, Any]) -> None:
    first = at(GIG, preset, "write", gfn=0x40123)
    (fault,) = first.step["faults"]
    assert (fault["path"], fault["fast_result"], fault["level"]) == expected["first"]
    assert logs(GIG, preset) == [expected["round"], expected["end"]]
    assert result(GIG, preset)["final"]["migration"]["lost"] == expected["lost"]


def test_one_gig_page_modern_splits_the_gigabyte_and_loses_nothing() -> None:
    # §5.2 at migrate_begin: 512 level-1 tables of read-only 4K sptes replace the 1G leaf; every write is
    # then a fast fault on its own 4K spte and logged (§6.1), nothing is lost; migrate_end's recovery zaps
    # the level-2 table and the 512 under it (§5.3). Summary detail: the states are a quarter million rows.
    sim = Simulation(load_scenario(GIG), make_policy("modern"), detail="summary")
    got = []
    while not sim.done:
        step = sim.step()
        op = step.op
        if op["op"] == "migrate_begin":
            tables = [sp for sp in sim.kvm.active_mmu_pages.values() if sp.level == 1]
            assert sim.kvm.stat.lpages == 0 and len(tables) == 512
            assert not any(spte & W_BIT for sp in tables for spte in sp.spt)
        if op["op"] == "write":
            assert step.fault_counts == {"fast": op["count"], "slow": 0}
        if step.dirty_log is not None:
            got.append(step.dirty_log)
    assert got == [GIG_ROUND, GIG_END]
    assert sim.migration.lost == []
    assert sim.kvm.stat.mmu_shadow_zapped == 1 + 512


def test_one_gig_page_lazy_buggy_marks_the_first_page_of_the_gigabyte() -> None:
    first = at(GIG, "lazy-buggy", "write", gfn=0x40123)
    assert first.step["marked_dirty"] == [0x40000]
    # The whole gigabyte is writable behind that one bit, and stays so to the end (§4.2 steps 4-5).
    assert violated(first, "no_writable_large_while_logging") == [0x40000]
    assert leaves(walk(GIG, "lazy-buggy")[-1]) == [(3, 0x40000, True)]


# --- cow-large-spte ---------------------------------------------------------------------------------------

COW = "cow-large-spte"


def test_cow_large_spte_is_built_without_hw_w_or_mw(preset: str) -> None:  # logging is off: as in 3.x
    # §3.8 map_writable is false for an unbroken COW page; §1.3 / §3.10 set_spte then grants no write access.
    first = at(COW, preset, "read", gfn=0x210)
    (spte,) = [s for s in first.state["sptes"] if s["leaf"]]
    assert (spte["level"], spte["gfn"], spte["large"]) == (2, 0x200, True)
    assert not spte["host_writable"] and not spte["writable"] and not spte["mmu_writable"]


@pytest.mark.parametrize(
    ("preset", "_"), per_preset(dict.fromkeys(("zap", "lazy-buggy", "lazy")), MODERN_SPLITS)
)
def test_cow_large_spte_every_preset_refuses_the_fast_path_and_drops_it(preset: str, _: None) -> None:
    # §3.3: write protection skips a spte that is not writable, in 3.14 too: nothing changes at enable.
    assert at(COW, preset, "enable_dirty_log").step["spte_changes"] == []
    # §3.9: PRESENT|WRITE tries the fast path, which refuses a spte without HW ∧ MW whatever its guard;
    # §3.2 (404381c5): the slow path drops the large spte, with a flush, and maps the page alone (§7.3).
    write = at(COW, preset, "write", gfn=0x250)
    (fast,) = events(write, "fast_page_fault")
    assert (fast["error_code"], fast["sp_level"], fast["result"]) == (3, 2, "not_locklessly_modifiable")
    assert fast["new"] == fast["old"]
    assert [f["path"] for f in write.step["faults"]] == ["slow"]
    assert [(e["level"], e["index"]) for e in events(write, "drop_large_spte")] == [(2, 1)]
    assert write.step["marked_dirty"] == [0x250]
    assert leaves(write) == [(1, 0x250, True)]
    # The write broke COW for the whole 2 MiB host page, so the later read maps writable and marks (§3.10).
    assert at(COW, preset, "read", gfn=0x300).step["marked_dirty"] == [0x300]
    assert logs(COW, preset) == [[0x250, 0x260, 0x300]]
    assert result(COW, preset)["final"]["violations"] == []


def test_cow_large_spte_modern_splits_it_and_rebuilds_one_4k_spte() -> None:
    # §5.2: eager splitting copies the 2M spte's permissions to its 512 4K sptes: none has W, HW or MW.
    enabled = at(COW, "modern", "enable_dirty_log")
    small = [s for s in enabled.state["sptes"] if s["leaf"]]
    assert len(small) == 512 and all(s["level"] == 1 for s in small)
    assert not any(s["writable"] or s["host_writable"] or s["mmu_writable"] for s in small)
    # The fast path still refuses a spte without HW (§3.9); the slow path breaks COW and maps the page
    # writable at 4K: no large spte to drop, so no drop and no flush.
    write = at(COW, "modern", "write", gfn=0x250)
    assert [(f["path"], f["fast_result"]) for f in write.step["faults"]] == [
        ("slow", "not_locklessly_modifiable")
    ]
    assert events(write, "drop_large_spte") == [] and write.step["tlb_flushes"] == 0
    # The read of 0x300 goes through its read-only 4K spte: no exit, nothing marked (live-kernel note 1).
    read = at(COW, "modern", "read", gfn=0x300)
    assert (read.step["fault_counts"], read.step["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    assert logs(COW, "modern") == [[0x250, 0x260]]


def test_cow_large_spte_without_404381c5_livelocks() -> None:
    # §3.2 / §4.2 side note: without drop_large_spte in __direct_map the write loops forever.
    _, _, out = run_scenario(COW, "lazy", {"direct_map_drops_large": "false"}, detail="summary")
    livelocks = [v["gfn"] for v in out["final"]["violations"] if v["invariant"] == "fault_livelock"]
    assert livelocks[:1] == [0x250]


# --- two-vcpus-tlb-flush ----------------------------------------------------------------------------------

TWO = "two-vcpus-tlb-flush"


def test_two_vcpus_cached_writable_translation_bypasses_the_spte(preset: str) -> None:
    # Spec §8: a write that hits a writable TLB entry never consults the spte. vCPU 1 stored through the 2M
    # translation, so its entry is writable with the dirty flag cached.
    stored = at(TWO, preset, "write", gfn=0x2A0, vcpu=1)
    assert stored.tlb[1] == [TlbEntry(2, 0x200, 0x80000, True, True)]
    # Enabling logging flushes every TLB unconditionally (§3.5).
    enabled = at(TWO, preset, "enable_dirty_log")
    assert enabled.tlb == {0: [], 1: []}


@pytest.mark.parametrize(
    ("preset", "under_lock"),
    # §3.5 / §3.11: 3.14 flushes inside mmu_lock; 198c74f4 (3.16) after unlocking. caf6900f's era flushed
    # inside the lock (§7.2 step 3 table). modern keeps 3.16's placement (§5.1 step 4).
    per_preset({"zap": True, "lazy-buggy": True, "lazy": False, "modern": False}),
)
def test_two_vcpus_where_the_write_protect_flushes_run(preset: str, under_lock: bool) -> None:
    enabled = at(TWO, preset, "enable_dirty_log")
    flushes = events(enabled, "kvm_flush_remote_tlbs")
    assert [(e["caller"], e["under_mmu_lock"]) for e in flushes] == [
        ("kvm_mmu_slot_remove_write_access", under_lock)
    ]
    get = at(TWO, preset, "get_dirty_log", nth=0)
    assert [e["under_mmu_lock"] for e in events(get, "kvm_flush_remote_tlbs")] == [under_lock]


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §3.10: zap's read of 0x2a0 after enabling faults and marks it; lazy reads it through the
            # read-only 2M spte. The rewrite after GET is a fast fault on a read-only 4K spte (§3.9).
            "zap": {"logs": [[0x211, 0x2A0, 0x300], [0x300]], "rewrite": ["fixed"], "lost": [[], []]},
            "lazy": {"logs": [[0x211, 0x300], [0x300]], "rewrite": ["fixed"], "lost": [[], []]},
            # §4.2: 0x200 is logged for vCPU 0's write, vCPU 1's stores are never reported.
            "lazy-buggy": {"logs": [[0x200], []], "rewrite": [], "lost": [[0x211, 0x300], [0x300]]},
            # Live-kernel note 4: exactly [0x211, 0x300]; the 4K sptes eager splitting built are fixed by the
            # fast path (§5.2), and the read of 0x2a0 neither faults nor marks.
            "modern": {"logs": [[0x211, 0x300], [0x300]], "rewrite": ["fixed"], "lost": [[], []]},
        }
    ),
)
def test_two_vcpus_dirty_logs(preset: str, expected: dict[str, Any]) -> None:
    assert logs(TWO, preset) == expected["logs"]
    gets = [at(TWO, preset, "get_dirty_log", nth=n) for n in (0, 1)]
    assert [violated(get, "written_not_logged") for get in gets] == expected["lost"]
    assert fast_results(at(TWO, preset, "write", nth=2, gfn=0x300, vcpu=1)) == expected["rewrite"]


# Lazy-buggy never maps 0x300 with a 4K spte: its side is the spurious-fault test below.
@pytest.mark.parametrize("preset", CORRECT)
def test_two_vcpus_get_dirty_log_flush_closes_the_tlb_window(preset: str) -> None:
    # The second store of vCPU 1 to 0x300 goes through its cached writable entry: no exit at all.
    second = at(TWO, preset, "write", nth=1, gfn=0x300, vcpu=1)
    assert second.step["fault_counts"] == {"fast": 0, "slow": 0}
    assert [e["via"] for e in events(second, "guest_access")] == ["tlb"]
    assert TlbEntry(1, 0x300, 0x80100, True, True) in second.tlb[1]
    # §3.6: GET write-protects 0x300's 4K spte and, because bits were set, flushes: the entry is gone.
    get = at(TWO, preset, "get_dirty_log", nth=0)
    assert get.tlb == {0: [], 1: []}
    assert (1, 0x300, False) in leaves(get)
    # So the next store exits and is logged by the fast path (§3.9).
    assert at(TWO, preset, "write", nth=2, gfn=0x300, vcpu=1).step["marked_dirty"] == [0x300]


def test_two_vcpus_modern_read_neither_faults_nor_marks() -> None:
    # §5.2: after the eager split vCPU 1's read of 0x2a0 goes through a read-only 4K spte; live-kernel note 4.
    read = at(TWO, "modern", "read", gfn=0x2A0, vcpu=1)
    assert (read.step["fault_counts"], read.step["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    assert fast_results(at(TWO, "modern", "write", gfn=0x211, vcpu=0)) == ["fixed"]


def test_two_vcpus_lazy_drop_flush_removes_the_stale_large_entry() -> None:
    read = at(TWO, "lazy", "read", gfn=0x2A0, vcpu=1)
    assert read.tlb[1] == [TlbEntry(2, 0x200, 0x80000, False, True)]
    # §3.2 / §3.11: __direct_map's drop_large_spte flushes, and vCPU 1's 2M entry goes with it.
    write = at(TWO, "lazy", "write", gfn=0x211, vcpu=0)
    assert [e["caller"] for e in events(write, "kvm_flush_remote_tlbs")] == ["drop_large_spte"]
    assert write.tlb[1] == []


def test_two_vcpus_lazy_buggy_stale_entry_meets_a_spurious_fast_fault() -> None:
    # §3.11: the fast path's W is a permission increase, so no flush; vCPU 1 keeps a read-only entry, its
    # store exits, and §3.9's "if W(s): spurious" lets it retry through the now writable 2M spte.
    write = at(TWO, "lazy-buggy", "write", gfn=0x211, vcpu=0)
    assert write.step["marked_dirty"] == [0x200] and write.step["tlb_flushes"] == 0
    assert write.tlb[1] == [TlbEntry(2, 0x200, 0x80000, False, True)]
    store = at(TWO, "lazy-buggy", "write", nth=0, gfn=0x300, vcpu=1)
    assert fast_results(store) == ["spurious"]
    assert store.step["marked_dirty"] == []


# --- migration-verdict and migration-many-rounds --------------------------------------------------------

VERDICT = "migration-verdict"
ROUNDS = "migration-many-rounds"
# The pages written between two rounds: 0x210-0x213; 0x210, 0x211 and 0x380; 0x210; then 0x211 before the end.
ROUND_LOGS = [[0x210, 0x211, 0x212, 0x213], [0x210, 0x211, 0x380], [0x210], [0x211]]


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # Contract §1: begin sends every page (512 + 64), the final round re-sends what GET returned.
            "zap": {"end": [0x250, 0x300, 0x1002], "lost": [], "sent": 576 + 3},
            "lazy": {"end": [0x250, 0x300, 0x1002], "lost": [], "sent": 576 + 3},
            # §4.2: 0x200 instead of 0x250, nothing for 0x300; slot 2 (4K only) is unaffected.
            "lazy-buggy": {"end": [0x200, 0x1002], "lost": [0x250, 0x300], "sent": 576 + 2},
            "modern": {"end": [0x250, 0x300, 0x1002], "lost": [], "sent": 576 + 3},
        }
    ),
)
def test_migration_verdict(preset: str, expected: dict[str, Any]) -> None:
    assert logs(VERDICT, preset) == [expected["end"]]
    migration = result(VERDICT, preset)["final"]["migration"]
    assert migration == {"rounds": 1, "pages_sent": expected["sent"], "lost": expected["lost"]}
    # The 4K-backed slot has no large spte, so the fast path fixes its 4K spte in every preset (§3.9).
    assert fast_results(at(VERDICT, preset, "write", gfn=0x1002)) == ["fixed"]


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # Each round returns what was written since the previous GET (§3.6, §3.13 item 5).
            "zap": {"logs": ROUND_LOGS, "lost": []},
            "lazy": {"logs": ROUND_LOGS, "lost": []},
            # §7.2 step 9 (b): after the first round nothing in the range is ever logged again.
            "lazy-buggy": {"logs": [[0x200], [], [], []], "lost": [0x210, 0x211, 0x212, 0x213, 0x380]},
            "modern": {"logs": ROUND_LOGS, "lost": []},
        }
    ),
)
def test_migration_many_rounds(preset: str, expected: dict[str, Any]) -> None:
    assert logs(ROUNDS, preset) == expected["logs"]
    migration = result(ROUNDS, preset)["final"]["migration"]
    sent = 512 + sum(len(log) for log in expected["logs"])
    assert migration == {"rounds": 4, "pages_sent": sent, "lost": expected["lost"]}


# Lazy-buggy takes no exit at all after its first fast fault (test_migration_many_rounds).
@pytest.mark.parametrize("preset", CORRECT)
def test_migration_many_rounds_rewrites_are_fast_faults(preset: str) -> None:
    # §3.6 left 0x210 and 0x211 read-only with HW ∧ MW; §3.9 fixes 4K sptes locklessly. 0x380 was never
    # mapped under logging: a not-present, slow fault.
    assert at(ROUNDS, preset, "write", gfn=0x210, count=2).step["fault_counts"] == {"fast": 2, "slow": 0}
    assert at(ROUNDS, preset, "write", gfn=0x380).step["fault_counts"] == {"fast": 0, "slow": 1}


def test_migration_many_rounds_modern_faults_are_all_fast() -> None:
    # §5.2: migrate_begin split the 2M spte, so 0x380 already has a read-only 4K spte: a fast fault too.
    assert at(ROUNDS, "modern", "write", gfn=0x210, count=2).step["fault_counts"] == {"fast": 2, "slow": 0}
    assert at(ROUNDS, "modern", "write", gfn=0x380).step["fault_counts"] == {"fast": 1, "slow": 0}


def test_migration_verdict_modern_recovers_the_2m_page_at_the_end() -> None:
    # §5.3: migrate_end switches logging off and zaps slot 1's 4K table; slot 2 is 4K-backed and stays.
    end = at(VERDICT, "modern", "migrate_end")
    assert not [leaf for leaf in leaves(end) if 0x200 <= leaf[1] < 0x400]
    assert (2, 0x200, False) not in leaves(end)


# --- disable-dirty-log ------------------------------------------------------------------------------------

DISABLE = "disable-dirty-log"


@pytest.mark.parametrize(
    ("preset", "_"), per_preset(dict.fromkeys(("zap", "lazy-buggy", "lazy")), MODERN_RECOVERS)
)
def test_disable_dirty_log_changes_no_spte(preset: str, _: None) -> None:
    # §2: in 3.14/3.16 disabling logging does nothing to the sptes: no zap, no collapse.
    disabled = at(DISABLE, preset, "disable_dirty_log")
    assert disabled.step["spte_changes"] == []
    assert disabled.state["sptes"] == before(DISABLE, preset, disabled).state["sptes"]
    assert disabled.state["dirty_bitmaps"] == {}


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §3.9 "the level argument in 3.14": logging off → level 2, the walk ends on a 4K spte that is
            # not last at level 2 → slow path, which maps a 2M leaf over the table (§3.10).
            "zap": {"write": ("not_last_spte", 2, 1), "read": {"fast": 0, "slow": 0}},
            # 3.16 checks the sp's level and fixes the 4K spte; the read of an unmapped page then faults and
            # the slow path maps the 2M leaf over the table (§3.10, §5.3 "recovery became rarer").
            "lazy": {"write": ("fixed", 1, 0), "read": {"fast": 0, "slow": 1}},
            # The writable 2M spte never left (§4.2): no exit at all.
            "lazy-buggy": {"write": (None, None, 1), "read": {"fast": 0, "slow": 0}},
            # §5.3: disabling zapped the 4K table, so the write meets a not-present entry (no fast path
            # without PRESENT, §3.9) and the slow path maps the 2M leaf at once; the read goes through it.
            "modern": {"write": (None, 2, 1), "read": {"fast": 0, "slow": 0}},
        }
    ),
)
def test_disable_dirty_log_when_large_pages_come_back(preset: str, expected: dict[str, Any]) -> None:
    write = at(DISABLE, preset, "write", nth=1, gfn=0x250)
    fault = write.step["faults"][0] if write.step["faults"] else {"fast_result": None, "level": None}
    assert (fault["fast_result"], fault["level"], write.state["stats"]["lpages"]) == expected["write"]
    read = at(DISABLE, preset, "read", gfn=0x300)
    assert read.step["fault_counts"] == expected["read"]
    assert read.state["stats"]["lpages"] == 1
    assert (2, 0x200, True) in leaves(read)


def test_disable_dirty_log_modern_zaps_the_4k_table_at_once() -> None:
    # §5.3: disabling zaps every non-leaf spte a huge leaf could replace: L2[1] is non-present right after,
    # with the 512 4K leaves of its table gone, and the next fault maps 2M (test above).
    disabled = at(DISABLE, "modern", "disable_dirty_log")
    assert disabled.step["spte_changes"] != []
    assert leaves(disabled) == []
    assert disabled.state["dirty_bitmaps"] == {}
    # Re-enabling splits again (§5.2): 512 read-only 4K leaves.
    again = at(DISABLE, "modern", "enable_dirty_log", nth=1)
    assert len(leaves(again)) == 512 and not any(writable for _, _, writable in leaves(again))


def test_disable_dirty_log_large_mapping_replaces_the_table() -> None:
    for preset, op, gfn in (("zap", "write", 0x250), ("lazy", "read", 0x300)):
        step = at(DISABLE, preset, op, nth=1 if op == "write" else 0, gfn=gfn)
        sets = [e["result"] for e in events(step, "mmu_set_spte")]
        assert sets == ["replaced_table"], preset
        assert [e["caller"] for e in events(step, "kvm_flush_remote_tlbs")] == ["mmu_set_spte"], preset


@pytest.mark.parametrize(
    ("preset", "expected"),
    # Spec live-kernel note 5 (disable, re-enable, write 0x201 logs [0x201]) for zap and lazy; §4.2 for b.
    per_preset(
        {
            "zap": ([0x201], []),
            "lazy": ([0x201], []),
            "lazy-buggy": ([0x200], [0x201]),
            "modern": ([0x201], []),
        }
    ),
)
def test_disable_dirty_log_then_enable_again(preset: str, expected: tuple[list[int], list[int]]) -> None:
    last = at(DISABLE, preset, "get_dirty_log", nth=1)
    assert (last.step["dirty_log"], violated(last, "written_not_logged")) == expected


# --- zap-all ----------------------------------------------------------------------------------------------

ZAP_ALL = "zap-all"


@pytest.mark.parametrize(
    ("preset", "zapped"),
    # The shadow pages present at the zap: root, L3 and L2 (§1.2), plus the level-1 sp that zap and lazy
    # built for 0x250/0x260 (§7.2 step 5 (a), (c)); lazy-buggy never built one (§7.2 step 5 (b)).
    # modern split both 2M sptes at enable (§5.2): two level-1 sps.
    per_preset({"zap": 4, "lazy": 4, "lazy-buggy": 3, "modern": 5}),
)
def test_zap_all_empties_the_tree(preset: str, zapped: int) -> None:
    zapped_step = at(ZAP_ALL, preset, "zap_all")
    assert zapped_step.state["sptes"] == []
    assert zapped_step.state["stats"]["lpages"] == 0
    assert zapped_step.state["stats"]["mmu_shadow_zapped"] == zapped
    assert zapped_step.step["tlb_flushes"] == 1
    assert zapped_step.tlb == {0: []}


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            "zap": {"first": [0x250, 0x260], "lost": []},
            "lazy": {"first": [0x250, 0x260], "lost": []},
            "lazy-buggy": {"first": [0x200], "lost": [0x250, 0x260]},  # §4.2
        },
        MODERN_READS,
    ),
)
def test_zap_all_makes_the_presets_agree_afterwards(preset: str, expected: dict[str, Any]) -> None:
    first = at(ZAP_ALL, preset, "get_dirty_log", nth=0)
    assert first.step["dirty_log"] == expected["first"]
    assert violated(first, "written_not_logged") == expected["lost"]
    # §7.2 step 9: the loss lasts "until the 2M spte is zapped for some unrelated reason (... memslot
    # change)". The slot is still logged, so both later accesses map 4K and mark their page (§3.8, §3.10).
    for op, gfn in (("write", 0x270), ("read", 0x420)):
        step = at(ZAP_ALL, preset, op, gfn=gfn)
        assert step.step["fault_counts"] == {"fast": 0, "slow": 1}
        assert step.step["marked_dirty"] == [gfn]
    assert at(ZAP_ALL, preset, "get_dirty_log", nth=1).step["dirty_log"] == [0x270, 0x420]


def test_zap_all_modern_read_after_the_zap_marks_nothing() -> None:
    # Both accesses after the zap fault (the tree is empty) and map 4K in the logged slot (§3.8); the read
    # maps read-only and marks nothing (live-kernel note 1), so the last GET returns the write alone.
    assert at(ZAP_ALL, "modern", "get_dirty_log", nth=0).step["dirty_log"] == [0x250, 0x260]
    write = at(ZAP_ALL, "modern", "write", gfn=0x270)
    assert (write.step["fault_counts"], write.step["marked_dirty"]) == ({"fast": 0, "slow": 1}, [0x270])
    read = at(ZAP_ALL, "modern", "read", gfn=0x420)
    assert (read.step["fault_counts"], read.step["marked_dirty"]) == ({"fast": 0, "slow": 1}, [])
    assert (1, 0x420, False) in leaves(read)
    assert at(ZAP_ALL, "modern", "get_dirty_log", nth=1).step["dirty_log"] == [0x270]


# --- presets-agree ----------------------------------------------------------------------------------------

AGREE = "presets-agree"


def _without_policy(out: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in out.items() if key not in ("variant", "policy")}


def test_presets_agree_on_everything_but_their_names() -> None:
    reference = _without_policy(result(AGREE, "lazy"))
    for preset in ("zap", "lazy-buggy", "lazy"):  # not modern: its read of 0x2c0 is not logged (note 1)
        assert _without_policy(result(AGREE, preset)) == reference, preset


@pytest.mark.parametrize(
    ("preset", "_"), per_preset(dict.fromkeys(("zap", "lazy-buggy", "lazy")), MODERN_READS)
)
def test_presets_agree_because_no_large_spte_ever_exists(preset: str, _: None) -> None:
    # §3.8: a logged slot always maps 4K, and slot 2's host pages are 4K: no fault ever leaves a large leaf.
    for after in walk(AGREE, preset):
        assert after.state["stats"]["lpages"] == 0
        assert all(f["level"] == 1 for f in after.step["faults"])
    # §3.10: the read of 0x2c0 under logging maps writable and is logged, by every 3.x preset.
    assert logs(AGREE, preset) == [[0x200, 0x280, 0x2C0, 0x300, 0x380, 0x1002], [0x200, 0x1003]]
    out = result(AGREE, preset)
    assert out["final"]["migration"] == {"rounds": 2, "pages_sent": 576 + 6 + 2, "lost": []}
    assert out["final"]["violations"] == []


def test_presets_agree_modern_differs_only_by_the_page_it_read() -> None:
    # The same faults as the 3.x presets (13 slow, 3 fast: no large spte exists, §3.8), but the read of
    # 0x2c0 marks nothing (live-kernel note 1): one page fewer in the first round and in pages_sent.
    total = {"fast": 0, "slow": 0}
    for after in walk(AGREE, "modern"):
        for path in total:
            total[path] += after.step["fault_counts"][path]
        assert after.state["stats"]["lpages"] == 0
    assert total == {"fast": 3, "slow": 13}
    assert logs(AGREE, "modern") == [[0x200, 0x280, 0x300, 0x380, 0x1002], [0x200, 0x1003]]
    migration = result(AGREE, "modern")["final"]["migration"]
    assert migration == {"rounds": 2, "pages_sent": 576 + 5 + 2, "lost": []}


# --- todays-kernel ----------------------------------------------------------------------------------------

TODAY = "todays-kernel"


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §5.2: eager splitting, then write protection: 512 read-only 4K leaves and no large one.
            "modern": [(1, 0x200 + k, False) for k in range(512)],
            # §3.5: 3.16 and caf6900f keep the 2M spte, read-only; 3.14 zaps it.
            "lazy": [(2, 0x200, False)],
            "lazy-buggy": [(2, 0x200, False)],
            "zap": [],
        }
    ),
)
def test_todays_kernel_what_enabling_leaves(preset: str, expected: list[tuple[int, int, bool]]) -> None:
    assert leaves(at(TODAY, preset, "enable_dirty_log")) == expected


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §5.2: "the first write to any page is a fast-path fault on a 4K spte"; the read takes no exit.
            "modern": {"read": {"fast": 0, "slow": 0}, "write": [("fast", "fixed", 1)]},
            # §3.9's guard, then §3.2's drop and a 4K mapping (§7.2 step 5 (c)).
            "lazy": {"read": {"fast": 0, "slow": 0}, "write": [("slow", "bail_large", 1)]},
            # §4.2: the fast path makes the 2M spte writable.
            "lazy-buggy": {"read": {"fast": 0, "slow": 0}, "write": [("fast", "fixed", 2)]},
            # §7.2 step 4 (a), 5 (a): the 2M spte is gone, so both fault on not-present entries.
            "zap": {"read": {"fast": 0, "slow": 1}, "write": [("slow", None, 1)]},
        }
    ),
)
def test_todays_kernel_the_first_write(preset: str, expected: dict[str, Any]) -> None:
    assert at(TODAY, preset, "read", gfn=0x2C0).step["fault_counts"] == expected["read"]
    write = at(TODAY, preset, "write", nth=0, gfn=0x250)
    assert [(f["path"], f["fast_result"], f["level"]) for f in write.step["faults"]] == expected["write"]


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # Live-kernel note 1: a read fault maps read-only and marks nothing; only the writes are logged.
            "modern": {"read": ([], False), "log": [0x250, 0x260], "lost": []},
            # §3.10: a 3.x read fault on TDP maps writable and marks the page.
            "lazy": {"read": ([0x410], True), "log": [0x250, 0x260, 0x410], "lost": []},
            "zap": {"read": ([0x410], True), "log": [0x250, 0x260, 0x2C0, 0x410], "lost": []},
            # §4.2: 0x200 is marked for the write to 0x250; 0x260 takes no exit.
            "lazy-buggy": {"read": ([0x410], True), "log": [0x200, 0x410], "lost": [0x250, 0x260]},
        }
    ),
)
def test_todays_kernel_a_read_is_not_reported(preset: str, expected: dict[str, Any]) -> None:
    read = at(TODAY, preset, "read", gfn=0x410)
    assert read.step["fault_counts"] == {"fast": 0, "slow": 1}
    marked, writable = expected["read"]
    assert read.step["marked_dirty"] == marked
    assert (1, 0x410, writable) in leaves(read)
    get = at(TODAY, preset, "get_dirty_log")
    assert get.step["dirty_log"] == expected["log"]
    assert violated(get, "written_not_logged") == expected["lost"]


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §5.3: the PDEs of both ranges are non-present at once; the next write maps 2M again.
            "modern": {"after_disable": [], "write": ("slow", None, 2), "lpages": 1},
            # 3.16: nothing zapped; the fast path fixes 0x250's 4K spte (disable-dirty-log).
            "lazy": {"after_disable": None, "write": ("fast", "fixed", 1), "lpages": 0},
            # 3.14 asks is_last_spte about level 2: the slow path maps 2M over the table.
            "zap": {"after_disable": None, "write": ("slow", "not_last_spte", 2), "lpages": 1},
            # The writable 2M spte never left: no exit.
            "lazy-buggy": {"after_disable": None, "write": None, "lpages": 1},
        }
    ),
)
def test_todays_kernel_disabling_recovers_the_huge_page(preset: str, expected: dict[str, Any]) -> None:
    disabled = at(TODAY, preset, "disable_dirty_log")
    if expected["after_disable"] is None:
        assert disabled.state["sptes"] == before(TODAY, preset, disabled).state["sptes"]
    else:
        assert leaves(disabled) == expected["after_disable"]
        assert disabled.state["stats"]["lpages"] == 0
    write = at(TODAY, preset, "write", nth=1, gfn=0x250)
    faults = [(f["path"], f["fast_result"], f["level"]) for f in write.step["faults"]]
    assert faults == ([] if expected["write"] is None else [expected["write"]])
    assert write.state["stats"]["lpages"] == expected["lpages"]


def test_todays_kernel_without_eager_split_splits_in_place() -> None:
    # §5.1: with eager splitting off the write fault splits the read-only 2M spte in place: a full table of
    # 512 4K sptes copying its permissions, then the written one made writable (1 RW + 511 RO).
    scenario = load_scenario(TODAY)
    sim = Simulation(scenario, make_policy("modern", {"eager_split": "false"}), detail="summary")
    while not sim.done:
        step = sim.step()
        if step.op["op"] == "enable_dirty_log":
            assert sim.kvm.stat.lpages == 1
        if step.op["op"] == "write" and step.op["gfn"] == 0x250:
            break
    table = next(sp for sp in sim.kvm.active_mmu_pages.values() if sp.level == 1)
    writable = [table.gfn + i for i, spte in enumerate(table.spt) if spte & 1 and spte & W_BIT]
    assert writable == [0x250] and all(spte & 1 for spte in table.spt)


# --- clear-dirty-log --------------------------------------------------------------------------------------

CLEAR = "clear-dirty-log"
CHUNK = dict(slot=1, first=0x40, num=64)


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §3.6 / §5.4: GET returns and clears what was written since the previous GET; CLEAR re-arms only
            # bits still set: none after the first GET, 0x300 (written again) before the last one.
            "modern": {"logs": [[0x250, 0x260, 0x300], [0x250, 0x300], [0x300]], "cleared": [[], [0x300]]},
            "lazy": {"logs": [[0x250, 0x260, 0x300], [0x250, 0x300], [0x300]], "cleared": [[], [0x300]]},
            "zap": {"logs": [[0x250, 0x260, 0x300], [0x250, 0x300], [0x300]], "cleared": [[], [0x300]]},
            # §4.2: the writable 2M spte: 0x200 once, then nothing; CLEAR touches only 4K sptes.
            "lazy-buggy": {"logs": [[0x200], [], []], "cleared": [[], []]},
        }
    ),
)
def test_clear_dirty_log_in_bitmap_mode(preset: str, expected: dict[str, Any]) -> None:
    assert logs(CLEAR, preset) == expected["logs"]
    clears = [a for a in walk(CLEAR, preset) if a.step["op"]["op"] == "clear_dirty_log"]
    got = [[g for e in events(a, "kvm_clear_dirty_log_protect") for g in e["gfns"]] for a in clears]
    assert got == expected["cleared"]
    assert [a.step["tlb_flushes"] for a in clears] == [0, 1 if expected["cleared"][1] else 0]


def _clear_states(mode: str) -> tuple[After, ...]:
    """The lesson under `modern` with another dirty-log mode, kept as `walk` keeps the presets'."""
    sim = Simulation(load_scenario(CLEAR), make_policy("modern", {"dirty_log_mode": mode}), detail="full")
    out = []
    while not sim.done:
        step = sim.step()
        state = cast(dict[str, Any], result_json(sim, [])["final"])
        out.append(After(step_json(step), state, {}))
    return tuple(out)


def _spte_of(after: After, gfn: int) -> dict[str, Any]:
    (spte,) = [s for s in after.state["sptes"] if s["leaf"] and s["level"] == 1 and s["gfn"] == gfn]
    return cast(dict[str, Any], spte)


def test_clear_dirty_log_manual_clear_rearms_just_the_chunk() -> None:
    # §5.4 MANUAL_PROTECT: GET only copies; CLEAR clears and re-protects the pages of its range.
    states = _clear_states("manual_clear")
    gets = [a for a in states if a.step["op"]["op"] == "get_dirty_log"]
    assert [a.step["dirty_log"] for a in gets] == [[0x250, 0x260, 0x300], [0x250, 0x300], [0x250, 0x300]]
    assert all(_spte_of(gets[0], gfn)["writable"] for gfn in (0x250, 0x260, 0x300))
    first_clear = next(a for a in states if _matches(a.step["op"], {"op": "clear_dirty_log", **CHUNK}))
    assert not _spte_of(first_clear, 0x250)["writable"] and not _spte_of(first_clear, 0x260)["writable"]
    assert _spte_of(first_clear, 0x300)["writable"]  # outside the chunk: still dirty, still writable
    # So the rewrite of 0x300 after it takes no exit, and is reported anyway: its bit was never cleared.
    rewrite = [a for a in states if _matches(a.step["op"], {"op": "write", "gfn": 0x300})][1]
    assert rewrite.step["fault_counts"] == {"fast": 0, "slow": 0}


def test_clear_dirty_log_initially_set_protects_only_what_it_clears() -> None:
    # §5.4 INITIALLY_SET: enabling sets every bit and touches no spte; the first CLEAR splits the huge page
    # (eager splitting) and write-protects only its own chunk.
    states = _clear_states("initially_set")
    enabled = next(a for a in states if a.step["op"]["op"] == "enable_dirty_log")
    assert enabled.step["spte_changes"] == [] and (2, 0x200, True) in leaves(enabled)
    first_get = next(a for a in states if a.step["op"]["op"] == "get_dirty_log")
    assert first_get.step["dirty_log"] == gfns(0x200, 512)
    first_clear = next(a for a in states if _matches(a.step["op"], {"op": "clear_dirty_log", **CHUNK}))
    small = {gfn: w for level, gfn, w in leaves(first_clear) if level == 1}
    assert len(small) == 512 and first_clear.state["stats"]["lpages"] == 0
    assert sorted(gfn for gfn, w in small.items() if not w) == gfns(0x240, 64)


def test_clear_dirty_log_ring_mode_refuses_both_ioctls() -> None:
    # §5.5 / contract: no bitmap under the dirty ring: GET and CLEAR fail with ENXIO and change nothing.
    states = _clear_states("ring")
    harvests = [a for a in states if a.step["op"]["op"] in ("get_dirty_log", "clear_dirty_log")]
    assert [a.step.get("error") for a in harvests] == [
        "KVM_GET_DIRTY_LOG: ENXIO", "KVM_CLEAR_DIRTY_LOG: ENXIO", "KVM_GET_DIRTY_LOG: ENXIO",
        "KVM_CLEAR_DIRTY_LOG: ENXIO", "KVM_GET_DIRTY_LOG: ENXIO",
    ]  # fmt: skip
    assert all(a.step["dirty_log"] is None and a.step["spte_changes"] == [] for a in harvests)


def test_clear_dirty_log_runs_on_the_live_kernel() -> None:
    # The live backend refuses flush_tlb and zap_all (it cannot ask a real kernel for them).
    ops = {step.op for step in load_scenario(CLEAR).steps}
    assert not ops & {"flush_tlb", "zap_all"}


# --- the library as a whole -------------------------------------------------------------------------------

# Commit ids and the like: runs of 8+ hex digits with at least one digit and one letter.
_COMMIT = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,40}\b")


def test_the_library_has_at_least_ten_lessons() -> None:
    names = builtin_names()
    assert len(names) >= 10
    assert {TODAY, CLEAR} <= set(names)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) for name in names)


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_is_a_lesson(name: str) -> None:
    scenario = dict(builtin_scenarios())[name]
    assert scenario == parse_scenario(load_builtin_text(name))
    assert scenario.title.strip()
    text = scenario.description
    assert len(text) >= 600, "a real description: what happens, per preset, and why it matters"
    assert "watch" in text.lower(), "the description says what to watch"
    for preset in PRESET_NAMES:
        assert f"**{preset}**" in text, f"the description has a bullet for {preset}"
    notes = [step for step in scenario.steps if isinstance(step, NoteStep)]
    assert all(len(note.text) >= 60 for note in notes), "a note says what to look at"
    # The worked example is exempt: it keeps the spec's §7.2 steps as they are, and the golden results and
    # the CLI and app tests pin its step indexes (see tests/test_worked_example.py).
    if name != WORKED:
        assert notes, "a lesson narrates with note steps"


@pytest.mark.parametrize("name", builtin_names())
def test_every_commit_id_a_lesson_names_is_one_the_spec_names(name: str) -> None:
    scenario = load_scenario(name)
    notes = [step.text for step in scenario.steps if isinstance(step, NoteStep)]
    texts: Sequence[str] = [scenario.description, *notes]
    for text in texts:
        for commit in _COMMIT.findall(text):
            assert any(known.startswith(commit) for known in SPEC_COMMITS), f"{name} names {commit}"
