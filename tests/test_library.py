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
# The lessons were written around the three 3.x presets. `modern` must keep the invariants too; where a
# lesson's claim is about 3.x behaviour that later kernels changed (eager splitting, recovery when logging
# stops, read faults that mark nothing), it is left out here and its own behaviour on that lesson is
# asserted in test_modern_preset.py.
INVARIANTS_HOLD = (*CORRECT, "modern")
MODERN_SPLITS = {
    "modern": "eager splitting maps the range with 4K sptes at enable (§5.2): test_modern_preset"
}
MODERN_RECOVERS = {"modern": "recovery zaps the 4K table when logging stops (§5.3): test_modern_preset"}
MODERN_READS = {"modern": "a read under logging marks nothing (live-kernel note 1): test_modern_preset"}
# One gigabyte split to 4K is 262144 sptes in every state this module keeps per step.
MODERN_GIGABYTE = {"modern": "262144 4K sptes per kept state after eager splitting: test_modern_preset"}
WORKED = "worked-example"


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


# --- the library as a whole -------------------------------------------------------------------------------

# Commit ids and the like: runs of 8+ hex digits with at least one digit and one letter.
_COMMIT = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,40}\b")


def test_the_library_has_at_least_ten_lessons() -> None:
    names = builtin_names()
    assert len(names) >= 10
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) for name in names)


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_is_a_lesson(name: str) -> None:
    scenario = dict(builtin_scenarios())[name]
    assert scenario == parse_scenario(load_builtin_text(name))
    assert scenario.title.strip()
    text = scenario.description
    assert len(text) >= 600, "a real description: what happens, per preset, and why it matters"
    assert "watch" in text.lower(), "the description says what to watch"
    for preset in ("zap", "lazy-buggy", "lazy"):  # the presets the lessons were written for (see above)
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
