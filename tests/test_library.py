"""The built-in lesson library (`scenarios/*.json`): every lesson runs clean where the kernel is correct,
says what it claims, and is written as a lesson.

Three groups of tests:

- every built-in under every preset: `zap` and `lazy` never violate an invariant (spec "Acceptance"), also
  by the whole-state checker; `lazy-buggy` may, which is the point;
- one group per lesson, asserting the claims its description and notes make. Each expected value is
  derived from kvm-mmu.md (the section is named beside it), not copied from a run; the steps are found by
  their op, so inserting a note never shifts an expectation. `modern` is upstream 6.13 and later (§5.7);
  a claim about a read *fault* is asserted on a step where the read does fault, never on one that hits a
  present spte;
- the library as a whole: at least ten lessons, each with a title, a description that says what to watch
  and names the kernel each preset stands for, note steps, only commit ids that the spec names, and none
  of the claims the spec has since corrected.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest
from conftest import LAYOUT_6X, PRESET_NAMES, load_scenario, per_preset, run_scenario, scenario_dict

from engine.invariants import INVARIANTS, check_all
from engine.policy import make_policy
from engine.result import result_json, step_json
from engine.scenario import NoteStep, WriteStep, parse_scenario
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
# The kernel each preset stands for (spec §0 "Which release has what", §4.1, §5.7), as a lesson names it
# right after the preset's name.
KERNELS = {
    "zap": "Linux 3.14",
    "lazy-buggy": "caf6900f, early 2013: a 3.9-era tree, reverted before v3.9",
    "lazy": "Linux 3.16.0",
    "modern": "upstream Linux 6.13 and later: the TDP MMU on an EPT host",
}
CORRECT = ("zap", "lazy")  # the kernels that must never violate an invariant (spec "Acceptance")
# `modern` must keep the invariants too. Where a lesson's 3.x claim is one later kernels changed (eager
# splitting, huge pages recovered when logging stops), the lesson's **modern** bullet says what happens
# instead, and a test of its own below asserts it.
INVARIANTS_HOLD = (*CORRECT, "modern")
MODERN_SPLITS = {"modern": "eager splitting maps the range with 4K sptes at enable (§5.2): its own test"}
MODERN_RECOVERS = {"modern": "disabling logging recovers the huge page in place (§5.7): its own test"}
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


def whatif(preset: str, **switches: str) -> str:
    """A preset with what-if switches, as `walk` and the helpers below take it: "modern:eager_split=false"."""
    return preset + ":" + ",".join(f"{key}={value}" for key, value in sorted(switches.items()))


@functools.cache
def walk(name: str, preset: str) -> tuple[After, ...]:
    """Run built-in `name` under `preset` (or a `whatif` of it) one step at a time, keeping the state after
    every step."""
    base, _, switches = preset.partition(":")
    overrides = dict(item.split("=") for item in switches.split(",")) if switches else None
    sim = Simulation(load_scenario(name), make_policy(base, overrides), detail="full")
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


# --- worked-example ---------------------------------------------------------------------------------------
# The spec's §7.2 steps are tested value by value in test_worked_example.py and test_golden.py; here, what the
# lesson's description adds about modern.


def test_worked_example_modern_recovers_the_2m_page_at_migrate_end() -> None:
    # §5.2: migrate_begin splits; the read of 0x2c0 hits a present 4K spte; every write is a fast fault.
    assert at(WORKED, "modern", "read", gfn=0x2C0).step["fault_counts"] == {"fast": 0, "slow": 0}
    writes = [a for a in walk(WORKED, "modern") if a.step["op"]["op"] == "write" and a.step["faults"]]
    assert {result for a in writes for result in fast_results(a)} == {"fixed"}
    assert logs(WORKED, "modern") == [[0x250, 0x260, 0x2C0], [0x250, 0x300], []]
    # §5.7: migrate_end switches logging off and recovers in place: a 2M leaf built from the table's first
    # present 4K spte (0x200's, read-only since the split), MMU-writable, one flush (the last GET found no
    # bit set, so it has none of its own).
    end = at(WORKED, "modern", "migrate_end")
    (huge,) = [s for s in end.state["sptes"] if s["leaf"]]
    assert (huge["level"], huge["gfn"], huge["writable"], huge["mmu_writable"]) == (2, 0x200, False, True)
    assert [e["caller"] for e in events(end, "kvm_flush_remote_tlbs")] == ["kvm_mmu_recover_huge_pages"]


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
            # §5.2: both 2M sptes are split to 4K at enable, all present, so every read hits a present 4K
            # spte (§5.1: "later reads in that range do not fault"): no read fault, so none is logged; the
            # write is a fast fault on its own 4K spte (§5.2) and logs 0x480 (§5.7, the faulting gfn).
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


def test_read_mostly_logging_modern_reads_hit_present_4k_sptes() -> None:
    # §5.2: right after enabling no large spte is left; both 2M ranges are 512 read-only 4K leaves each.
    enabled = at(READ_MOSTLY, "modern", "enable_dirty_log")
    assert enabled.state["stats"]["lpages"] == 0
    small = [leaf for leaf in leaves(enabled) if leaf[0] == 1]
    assert len(small) == 2 * 512 and not any(writable for _, _, writable in small)
    # So every read goes through a present 4K spte without an exit, and the write is a fast fault (§5.2).
    # No read faults here: this says nothing of what a read fault logs (todays-kernel's 0x410 does).
    for gfn, count, stride in ((0x200, 8, 0x40), (0x400, 4, 0x20), (0x500, 4, 0x20)):
        reads = at(READ_MOSTLY, "modern", "read", gfn=gfn, count=count, stride=stride)
        assert (reads.step["fault_counts"], reads.step["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    write = at(READ_MOSTLY, "modern", "write", gfn=0x480)
    assert (fast_results(write), write.step["marked_dirty"]) == (["fixed"], [0x480])


def test_read_mostly_logging_modern_without_eager_split_splits_on_the_write() -> None:
    # The what-if the modern bullet names. §5.1: with eager splitting off, enabling only write-protects the
    # 2M sptes; the write fault splits its range in place (512 present 4K sptes, 1 RW + 511 RO) instead of
    # dropping it, so the reads after it meet present sptes: no fault, and only 0x480 is logged. The first
    # range, never written, keeps its read-only 2M spte.
    variant = whatif("modern", eager_split="false")
    assert leaves(at(READ_MOSTLY, variant, "enable_dirty_log")) == [(2, 0x200, False), (2, 0x400, False)]
    write = at(READ_MOSTLY, variant, "write", gfn=0x480)
    faults = [(f["path"], f["fast_result"], f["level"]) for f in write.step["faults"]]
    assert faults == [("slow", "bail_large", 1)]
    assert [e["caller"] for e in events(write, "tdp_mmu_split_huge_page")] != []
    small = {gfn: w for level, gfn, w in leaves(write) if level == 1}
    assert len(small) == 512 and [gfn for gfn, w in small.items() if w] == [0x480]
    after = at(READ_MOSTLY, variant, "read", gfn=0x500, count=4, stride=0x20)
    assert (after.step["fault_counts"], after.step["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    get = at(READ_MOSTLY, variant, "get_dirty_log")
    assert get.step["dirty_log"] == [0x480] and (2, 0x200, False) in leaves(get)


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
            # §5.2: the storm meets 512 read-only 4K sptes, each fixed by the fast path (no flush, §3.11),
            # which marks the faulting gfn (§5.7): all 512 logged.
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
            # second GET returns exactly the rewritten pages (§3.13 item 5: each page written since the last
            # GET is in the next one). modern: §5.1, GET clears W on the 4K sptes as 3.16 does.
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


def test_one_gig_page_modern_splits_the_gigabyte_and_recovers_it_in_place() -> None:
    # §5.2 at migrate_begin: 512 level-1 tables of read-only 4K sptes replace the 1G leaf; every write is
    # then a fast fault on its own 4K spte and logged (§6.1), nothing is lost. migrate_end switches logging
    # off, and 6.13's recovery (§5.7) replaces the level-2 table and everything under it by one 1G leaf at
    # once, built from the first present 4K spte (0x40000's: the read fault built it writable and dirty,
    # §5.7; the split copied that, write protection took W): read-only, MMU-writable, PS set, the address
    # masked to the gigabyte. Summary detail: the states are a quarter million rows.
    sim = Simulation(load_scenario(GIG), make_policy("modern"), detail="summary")
    got = []
    while not sim.done:
        step = sim.step()
        op = step.op
        if op.op == "migrate_begin":
            tables = [sp for sp in sim.kvm.active_mmu_pages.values() if sp.level == 1]
            assert sim.kvm.stats()["pages_4k"] == 512 * 512 and len(tables) == 512
            assert not any(spte & W_BIT for sp in tables for spte in sp.spt)
        if isinstance(op, WriteStep):
            assert step.fault_counts == {"fast": op.count, "slow": 0}
        if step.dirty_log is not None:
            got.append(step.dirty_log)
        if op.op == "migrate_end":
            # One flush for the last GET (it returned 0x7fffe) and one for the slot's recovery (§5.7).
            assert step.tlb_flushes == 2
    assert got == [GIG_ROUND, GIG_END]
    assert sim.migration.lost == []
    stats = sim.kvm.stats()
    assert (stats["pages_1g"], stats["pages_2m"], stats["pages_4k"]) == (1, 0, 0)
    assert [sp.level for sp in sim.kvm.active_mmu_pages.values()] == [4, 3]
    (l3,) = [sp for sp in sim.kvm.active_mmu_pages.values() if sp.level == 3]
    L6 = LAYOUT_6X
    assert l3.spt[1] == L6.leaf(0x1000000, L6.PS | L6.A | L6.D | L6.HW | L6.MW)


def test_one_gig_page_lazy_buggy_marks_the_first_page_of_the_gigabyte() -> None:
    first = at(GIG, "lazy-buggy", "write", gfn=0x40123)
    assert first.step["marked_dirty"] == [0x40000]
    # The whole gigabyte is writable behind that one bit, and stays so to the end (§4.2 steps 4-5).
    assert violated(first, "no_writable_large_while_logging") == [0x40000]
    assert leaves(walk(GIG, "lazy-buggy")[-1]) == [(3, 0x40000, True)]


# --- cow-large-spte ---------------------------------------------------------------------------------------

COW = "cow-large-spte"
SHARED, OWNED = 0x200, 0x400  # slot 1 (host_cow "copy") and slot 2 (host_cow "reuse"), one 2 MiB page each


def test_cow_large_spte_is_built_without_hw_w_or_mw(preset: str) -> None:  # logging is off: as in 3.x
    # §3.8 map_writable is false for a host page not writable yet; §1.3 / §3.10 set_spte then grants no write
    # access, whoever owns the page.
    second = at(COW, preset, "read", gfn=0x410)
    sptes = [s for s in second.state["sptes"] if s["leaf"]]
    assert [(s["level"], s["gfn"], s["large"]) for s in sptes] == [(2, SHARED, True), (2, OWNED, True)]
    assert not any(s["host_writable"] or s["writable"] or s["mmu_writable"] for s in sptes)


def _first_write_refused(write: After) -> None:
    # §3.9: PRESENT|WRITE tries the fast path, which refuses a spte without HW ∧ MW whatever its guard.
    fast = events(write, "fast_page_fault")[0]
    assert (fast["error_code"], fast["result"]) == (3, "not_locklessly_modifiable")
    assert fast["new"] == fast["old"]


@pytest.mark.parametrize(
    ("preset", "_"), per_preset(dict.fromkeys(("zap", "lazy-buggy", "lazy")), MODERN_SPLITS)
)
def test_cow_large_spte_shared_page_goes_through_the_mmu_notifier(preset: str, _: None) -> None:
    # §3.3: write protection skips a spte that is not writable, in 3.14 too: nothing changes at enable.
    for nth in (0, 1):
        assert at(COW, preset, "enable_dirty_log", nth=nth).step["spte_changes"] == []
    # §5.8: writing the shared page copies it; the host's page-table change fires the mmu notifier, which
    # drops every spte of the old page (here the one 2M spte) and flushes; the fault in flight sees
    # mmu_notifier_retry and maps nothing, and the guest's retried fault maps 0x250 writable at 4K (§3.8,
    # logged slot). So two slow faults, the flush from the notifier, and no drop_large_spte.
    write = at(COW, preset, "write", gfn=0x250)
    _first_write_refused(write)
    assert [(f["path"], f["level"]) for f in write.step["faults"]] == [("slow", None), ("slow", 1)]
    (notifier,) = events(write, "kvm_mmu_notifier_invalidate_range_start")
    assert (notifier["gfn_start"], notifier["gfn_end"], notifier["dropped"]) == (SHARED, SHARED + 512, 1)
    assert [e["gfn"] for e in events(write, "mmu_notifier_retry")] == [0x250]
    assert [e["caller"] for e in events(write, "kvm_flush_remote_tlbs")] == [
        "kvm_mmu_notifier_invalidate_range_start"
    ]
    assert events(write, "drop_large_spte") == []
    assert write.step["marked_dirty"] == [0x250]
    assert [leaf for leaf in leaves(write) if leaf[1] < OWNED] == [(1, 0x250, True)]
    # The host page is writable now, so the later read fault maps a writable 4K spte and marks it (§3.10).
    read = at(COW, preset, "read", gfn=0x300)
    assert (read.step["fault_counts"], read.step["marked_dirty"]) == ({"fast": 0, "slow": 1}, [0x300])
    assert at(COW, preset, "get_dirty_log", slot=1).step["dirty_log"] == [0x250, 0x260, 0x300]


@pytest.mark.parametrize(
    ("preset", "_"), per_preset(dict.fromkeys(("zap", "lazy-buggy", "lazy")), MODERN_SPLITS)
)
def test_cow_large_spte_owned_page_is_dropped_by_404381c5(preset: str, _: None) -> None:
    # §5.8: a page the process owns alone is made writable in place, with no notifier; so the read-only 2M
    # spte is still there when the slow path maps 0x450 at 4K, and §3.2 (404381c5) drops it, with a flush,
    # before linking the table (§7.3's edge case).
    write = at(COW, preset, "write", gfn=0x450)
    _first_write_refused(write)
    assert [(f["path"], f["level"]) for f in write.step["faults"]] == [("slow", 1)]
    assert events(write, "kvm_mmu_notifier_invalidate_range_start") == []
    assert [(e["level"], e["index"]) for e in events(write, "drop_large_spte")] == [(2, 2)]
    assert [e["caller"] for e in events(write, "kvm_flush_remote_tlbs")] == ["drop_large_spte"]
    assert write.step["marked_dirty"] == [0x450]
    assert [leaf for leaf in leaves(write) if leaf[1] >= OWNED] == [(1, 0x450, True)]
    # As on the shared page, the read fault after it maps writable and marks its page (§3.10).
    assert at(COW, preset, "read", gfn=0x500).step["marked_dirty"] == [0x500]
    assert logs(COW, preset) == [[0x250, 0x260, 0x300], [0x450, 0x460, 0x500]]
    assert result(COW, preset)["final"]["violations"] == []


@pytest.mark.parametrize(
    ("preset", "_"), per_preset(dict.fromkeys(("zap", "lazy-buggy", "lazy")), MODERN_SPLITS)
)
def test_cow_large_spte_3x_largepages_keeps_the_spte_the_notifier_dropped(preset: str, _: None) -> None:
    # §3.2 / §7.2 step 5 (c): drop_large_spte counts its spte out of largepages; 3.14/3.16's notifier path
    # (kvm_unmap_rmapp → drop_spte) does not, so the kernel's count keeps slot 1's dropped 2M spte, while the
    # large leaves present (contract §4's lpages) are none.
    stats = walk(COW, preset)[-1].state["stats"]
    assert (stats["largepages"], stats["lpages"]) == (1, 0)


def test_cow_large_spte_modern_splits_both_and_the_notifier_drops_4k_sptes() -> None:
    # §5.2: eager splitting copies each 2M spte's permissions to its 512 4K sptes: none has W, HW or MW.
    enabled = at(COW, "modern", "enable_dirty_log", nth=1)
    small = [s for s in enabled.state["sptes"] if s["leaf"]]
    assert len(small) == 2 * 512 and all(s["level"] == 1 for s in small)
    assert not any(s["writable"] or s["host_writable"] or s["mmu_writable"] for s in small)
    assert at(COW, "modern", "read", gfn=0x2C0).step["fault_counts"] == {"fast": 0, "slow": 0}
    # Shared page (§5.8, every kernel): the notifier drops all 512 4K sptes of the old page and flushes; the
    # retried fault maps 0x250 writable. 0x300 is then unmapped, so its read faults, and with the host page
    # writable now the read maps a writable, dirty 4K spte and logs the page (§5.7).
    write = at(COW, "modern", "write", gfn=0x250)
    _first_write_refused(write)
    assert [(f["path"], f["level"]) for f in write.step["faults"]] == [("slow", None), ("slow", 1)]
    assert [e["dropped"] for e in events(write, "kvm_mmu_notifier_invalidate_range_start")] == [512]
    assert [leaf for leaf in leaves(write) if leaf[1] < OWNED] == [(1, 0x250, True)]
    read = at(COW, "modern", "read", gfn=0x300)
    assert (read.step["fault_counts"], read.step["marked_dirty"]) == ({"fast": 0, "slow": 1}, [0x300])
    assert (1, 0x300, True) in leaves(read)
    # Owned page: no notifier, and no large spte to drop: the slow path rebuilds 0x450's own 4K spte
    # writable, with no flush (a permission increase, §3.11).
    owned = at(COW, "modern", "write", gfn=0x450)
    _first_write_refused(owned)
    assert [(f["path"], f["level"]) for f in owned.step["faults"]] == [("slow", 1)]
    assert events(owned, "kvm_mmu_notifier_invalidate_range_start") == events(owned, "drop_large_spte") == []
    assert owned.step["tlb_flushes"] == 0
    # The split's other 4K sptes keep no HW: the read of 0x500 hits a present spte (no fault, nothing
    # logged), and the write to 0x460 is refused by the fast path again (§3.9) and fixed by the slow path.
    other = at(COW, "modern", "read", gfn=0x500)
    assert (other.step["fault_counts"], other.step["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    assert fast_results(at(COW, "modern", "write", gfn=0x460)) == ["not_locklessly_modifiable"]
    assert logs(COW, "modern") == [[0x250, 0x260, 0x300], [0x450, 0x460]]


@pytest.mark.parametrize(
    ("preset", "livelocked"),
    # §3.2 / §4.2 side note: without drop_large_spte in __direct_map, a write to a read-only large spte
    # loops forever, but only on the owned page: on the shared one the notifier drops the spte first (§5.8).
    # modern has no large spte left to loop on after eager splitting (§5.2).
    per_preset({"zap": [0x450, 0x460], "lazy-buggy": [0x450, 0x460], "lazy": [0x450, 0x460], "modern": []}),
)
def test_cow_large_spte_without_404381c5_livelocks_on_the_owned_page(
    preset: str, livelocked: list[int]
) -> None:
    variant = whatif(preset, direct_map_drops_large="false")
    violations = [v for after in walk(COW, variant) for v in after.step["violations"]]
    assert sorted({v["gfn"] for v in violations}) == livelocked
    assert {v["invariant"] for v in violations} <= {"fault_livelock"}
    assert logs(COW, variant)[0] == [0x250, 0x260, 0x300]


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
            # §5.2: the 4K sptes eager splitting built are fixed by the fast path, which marks the faulting
            # gfn (§5.7), and the read of 0x2a0 hits a present 4K spte: no fault, nothing marked.
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
@pytest.mark.parametrize("preset", INVARIANTS_HOLD)
def test_two_vcpus_get_dirty_log_flush_closes_the_tlb_window(preset: str) -> None:
    # The second store of vCPU 1 to 0x300 goes through its cached writable entry: no exit at all.
    second = at(TWO, preset, "write", nth=1, gfn=0x300, vcpu=1)
    assert second.step["fault_counts"] == {"fast": 0, "slow": 0}
    assert [e["via"] for e in events(second, "guest_access")] == ["tlb"]
    assert TlbEntry(1, 0x300, 0x80100, True, True) in second.tlb[1]
    # §3.6 (§5.1 for 6.x): GET write-protects 0x300's 4K spte and, because bits were set, flushes: the
    # entry is gone.
    get = at(TWO, preset, "get_dirty_log", nth=0)
    assert get.tlb == {0: [], 1: []}
    assert (1, 0x300, False) in leaves(get)
    # So the next store exits and is logged by the fast path (§3.9).
    assert at(TWO, preset, "write", nth=2, gfn=0x300, vcpu=1).step["marked_dirty"] == [0x300]


def test_two_vcpus_modern_read_hits_a_present_4k_spte() -> None:
    # §5.2: after the eager split vCPU 1's read of 0x2a0 goes through a present, read-only 4K spte: no fault,
    # so nothing to log; vCPU 0's write is a fast fault on its own 4K spte.
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
    # §5.7: migrate_end switches logging off, and the 4K table becomes a read-only 2M leaf at once.
    assert leaves(at(ROUNDS, "modern", "migrate_end")) == [(2, 0x200, False)]


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §5.7 (6.13+): logging off, slot 1's 4K table is replaced in place by a 2M leaf built from
            # its first present 4K spte (0x200's, read-only since the split), MMU-writable; one flush for
            # the slot. Slot 2's host pages are 4K: nothing to recover there. Two more flushes: the GETs.
            "modern": {"slot1": [(2, 0x200, False)], "flushes": 3},
            # §2 / §5.3: 3.14 and 3.16 leave the 4K sptes as they are when logging stops.
            "zap": {"slot1": [(1, 0x250, False), (1, 0x300, False)], "flushes": 2},
            "lazy": {"slot1": [(1, 0x250, False), (1, 0x300, False)], "flushes": 2},
            # §4.2: the writable 2M spte never left. Each final GET found a bit set (0x200, 0x1002) and
            # flushed (§3.6), uselessly for slot 1.
            "lazy-buggy": {"slot1": [(2, 0x200, True)], "flushes": 2},
        }
    ),
)
def test_migration_verdict_what_migrate_end_leaves(preset: str, expected: dict[str, Any]) -> None:
    end = at(VERDICT, preset, "migrate_end")
    assert [leaf for leaf in leaves(end) if leaf[1] < 0x1000] == expected["slot1"]
    assert [leaf for leaf in leaves(end) if leaf[1] >= 0x1000] == [(1, 0x1000 + k, False) for k in range(4)]
    assert end.step["tlb_flushes"] == expected["flushes"]


def test_migration_verdict_modern_recovered_leaf_keeps_mmu_writable() -> None:
    # §5.7: "inheriting the child's bits (after a GET: read-only, MMU-writable)".
    end = at(VERDICT, "modern", "migrate_end")
    (large,) = [s for s in end.state["sptes"] if s["leaf"] and s["large"]]
    assert (large["writable"], large["mmu_writable"], large["host_writable"]) == (False, True, True)
    assert [e["caller"] for e in events(end, "kvm_flush_remote_tlbs")][-1] == "kvm_mmu_recover_huge_pages"


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
            # §5.7 (6.13+): disabling replaced the 4K table by a read-only, MMU-writable 2M leaf, so the write
            # is a fast fault on it (the guard only applies while logging, §5.1); the read goes through it.
            "modern": {"write": ("fixed", 2, 1), "read": {"fast": 0, "slow": 0}},
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


def test_disable_dirty_log_modern_recovers_the_huge_page_in_place() -> None:
    # §5.7: kvm_mmu_recover_huge_pages replaces the table by a huge leaf built from its first present child
    # (0x200's 4K spte), PS set and the address masked to the 2M boundary, in one store; one flush for the
    # slot. That child was the split's copy of the writable, dirty 2M leaf the first write built (§5.7:
    # make_spte sets D on a writable spte), write-protected at enable (§5.1: W only), so the 2M leaf is
    # R X PS A D HW MW.
    disabled = at(DISABLE, "modern", "disable_dirty_log")
    (huge,) = [s for s in disabled.state["sptes"] if s["leaf"]]
    assert (huge["level"], huge["sp_gfn"], huge["index"], huge["gfn"]) == (2, 0, 1, 0x200)
    L6 = LAYOUT_6X
    assert int(huge["value"], 16) == L6.leaf(0x80000, L6.PS | L6.A | L6.D | L6.HW | L6.MW)
    assert [e["recovered"] for e in events(disabled, "kvm_mmu_recover_huge_pages")] == [1]
    assert [e["caller"] for e in events(disabled, "kvm_flush_remote_tlbs")] == ["kvm_mmu_recover_huge_pages"]
    assert disabled.state["dirty_bitmaps"] == {}
    # Re-enabling splits again (§5.2): 512 read-only 4K leaves, so the write to 0x201 is a fast fault on its
    # own 4K spte that marks it (§5.7: the faulting gfn).
    again = at(DISABLE, "modern", "enable_dirty_log", nth=1)
    assert len(leaves(again)) == 512 and not any(writable for _, _, writable in leaves(again))
    write = at(DISABLE, "modern", "write", gfn=0x201)
    assert (fast_results(write), write.step["marked_dirty"]) == (["fixed"], [0x201])


def test_disable_dirty_log_modern_6_12_zaps_the_table_instead() -> None:
    # The what-if the lesson names: 6.12's zap_collapsible_spte_range (§5.3, §5.7) zaps the table, one
    # flush per zap; L2[1] stays non-present until the write faults on it (no PRESENT: not fast, §3.9) and
    # the slow path maps a writable 2M leaf.
    variant = whatif("modern", huge_page_recovery="zap_collapsible")
    disabled = at(DISABLE, variant, "disable_dirty_log")
    assert leaves(disabled) == []
    assert [e["caller"] for e in events(disabled, "kvm_flush_remote_tlbs")] == ["zap_collapsible_spte_range"]
    write = at(DISABLE, variant, "write", nth=1, gfn=0x250)
    assert [(f["path"], f["level"]) for f in write.step["faults"]] == [("slow", 2)]
    assert leaves(write) == [(2, 0x200, True)]


def test_disable_dirty_log_large_mapping_replaces_the_table() -> None:
    for preset, op, gfn in (("zap", "write", 0x250), ("lazy", "read", 0x300)):
        step = at(DISABLE, preset, op, nth=1 if op == "write" else 0, gfn=gfn)
        sets = [e["result"] for e in events(step, "mmu_set_spte")]
        assert sets == ["replaced_table"], preset
        assert [e["caller"] for e in events(step, "kvm_flush_remote_tlbs")] == ["mmu_set_spte"], preset


@pytest.mark.parametrize(
    ("preset", "expected"),
    # Re-enabling write-protects (or, §5.2, splits) again, so the write to 0x201 faults and is logged
    # (§3.5, §3.13 item 5); §4.2 for lazy-buggy, whose 2M spte is made writable again and marks 0x200.
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
    ("preset", "expected"),
    # The shadow pages present at the zap: root, L3 and L2 (§1.2), plus the level-1 sp that zap and lazy
    # built for 0x250/0x260 (§7.2 step 5 (a), (c)); lazy-buggy never built one (§7.2 step 5 (b)); modern
    # split both 2M sptes at enable (§5.2): two level-1 sps.
    per_preset(
        {
            # §5.8: kvm_mmu_invalidate_zap_all_pages zaps the old generation oldest first and commits it with
            # one flush; the loaded root is only marked invalid, and when the vCPU drops it (mmu_free_roots)
            # it is zapped once more and freed with another flush: mmu_shadow_zapped counts the root twice.
            "zap": {"order": [4, 3, 2, 1, 4], "flushes": 2, "zapped": 4 + 1},
            "lazy": {"order": [4, 3, 2, 1, 4], "flushes": 2, "zapped": 4 + 1},
            "lazy-buggy": {"order": [4, 3, 2, 4], "flushes": 2, "zapped": 3 + 1},
            # modern keeps the one-pass kvm_mmu_zap_all: newest first, one flush; 6.x's statistics have no
            # mmu_shadow_zapped (§5.7 "stats").
            "modern": {"order": [1, 1, 2, 3, 4], "flushes": 1, "zapped": None},
        }
    ),
)
def test_zap_all_empties_the_tree(preset: str, expected: dict[str, Any]) -> None:
    zapped = at(ZAP_ALL, preset, "zap_all")
    assert zapped.state["sptes"] == []
    assert zapped.state["stats"]["lpages"] == 0
    assert [e["level"] for e in events(zapped, "kvm_mmu_prepare_zap_page")] == expected["order"]
    assert zapped.step["tlb_flushes"] == expected["flushes"]
    assert zapped.state["stats"].get("mmu_shadow_zapped") == expected["zapped"]
    assert zapped.tlb == {0: []}


def test_zap_all_3x_frees_the_root_when_the_vcpu_drops_it() -> None:
    # §5.8: "roots freed later with one more flush": the generation moves on, then the vCPU's reload.
    zapped = at(ZAP_ALL, "lazy", "zap_all")
    assert [e["mmu_valid_gen"] for e in events(zapped, "kvm_mmu_invalidate_zap_all_pages")] == [1]
    assert [(e["vcpu"], e["freed"]) for e in events(zapped, "mmu_free_roots")] == [(0, True)]


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            "zap": {"first": [0x250, 0x260], "lost": []},
            "lazy": {"first": [0x250, 0x260], "lost": []},
            "lazy-buggy": {"first": [0x200], "lost": [0x250, 0x260]},  # §4.2
            "modern": {"first": [0x250, 0x260], "lost": []},  # §5.2: fast faults on the split's 4K sptes
        }
    ),
)
def test_zap_all_makes_the_presets_agree_afterwards(preset: str, expected: dict[str, Any]) -> None:
    first = at(ZAP_ALL, preset, "get_dirty_log", nth=0)
    assert first.step["dirty_log"] == expected["first"]
    assert violated(first, "written_not_logged") == expected["lost"]
    # §7.2 step 9: the loss lasts "until the 2M spte is zapped for some unrelated reason (... memslot
    # change)". The slot is still logged, so both later accesses fault, map 4K (§3.8) writable, since the host
    # page is, and mark their page (§3.10; §5.7 for 6.x: the read fault too).
    for op, gfn in (("write", 0x270), ("read", 0x420)):
        step = at(ZAP_ALL, preset, op, gfn=gfn)
        assert step.step["fault_counts"] == {"fast": 0, "slow": 1}
        assert step.step["marked_dirty"] == [gfn]
        assert (1, gfn, True) in leaves(step)
    assert at(ZAP_ALL, preset, "get_dirty_log", nth=1).step["dirty_log"] == [0x270, 0x420]


# --- presets-agree ----------------------------------------------------------------------------------------

AGREE = "presets-agree"


def _without_policy(out: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in out.items() if key not in ("variant", "policy")}


def test_presets_agree_on_everything_but_their_names() -> None:
    # The three 3.x presets share one spte layout and one set of statistics: their whole results agree.
    reference = _without_policy(result(AGREE, "lazy"))
    for preset in ("zap", "lazy-buggy", "lazy"):
        assert _without_policy(result(AGREE, preset)) == reference, preset


@pytest.mark.parametrize(
    ("preset", "lpages_at_end"),
    # §3.8: a logged slot always maps 4K, and slot 2's host pages are 4K: no fault ever leaves a large leaf.
    # Only modern's migrate_end, with logging off, recovers slot 1's table as a 2M leaf (§5.7); 3.14 and
    # 3.16 leave the 4K sptes when logging stops (§2).
    per_preset({"zap": 0, "lazy-buggy": 0, "lazy": 0, "modern": 1}),
)
def test_presets_agree_because_no_large_spte_ever_exists(preset: str, lpages_at_end: int) -> None:
    states = walk(AGREE, preset)
    for after in states[:-2]:  # every step before migrate_end (and its note)
        assert after.state["stats"]["lpages"] == 0
        assert all(f["level"] == 1 for f in after.step["faults"])
    assert states[-1].state["stats"]["lpages"] == lpages_at_end
    total = {path: sum(a.step["fault_counts"][path] for a in states) for path in ("fast", "slow")}
    assert total == {"fast": 3, "slow": 13}
    # §3.10 (3.x) and §5.7 (6.13+): the read of 0x2c0 under logging faults, maps writable since the host
    # page is, and is logged, by every preset.
    assert logs(AGREE, preset) == [[0x200, 0x280, 0x2C0, 0x300, 0x380, 0x1002], [0x200, 0x1003]]
    out = result(AGREE, preset)
    assert out["final"]["migration"] == {"rounds": 2, "pages_sent": 576 + 6 + 2, "lost": []}
    assert out["final"]["violations"] == []


def test_presets_agree_modern_step_by_step_with_lazy() -> None:
    # modern takes lazy's faults, logs and flush placement at every step (§5.1: write protection and the
    # flush after unlocking are 3.16's); it differs at migrate_end, where with logging off 6.13+ recovers
    # slot 1's table in place (§5.7), as a 2M leaf built from its first present 4K spte, 0x200's.
    for mine, lazy in zip(walk(AGREE, "modern"), walk(AGREE, "lazy"), strict=True):
        assert mine.step["fault_counts"] == lazy.step["fault_counts"]
        assert mine.step["marked_dirty"] == lazy.step["marked_dirty"]
        assert mine.step["dirty_log"] == lazy.step["dirty_log"]
        if mine.step["op"]["op"] == "migrate_end":
            break
        locks = [[e["under_mmu_lock"] for e in events(a, "kvm_flush_remote_tlbs")] for a in (mine, lazy)]
        assert locks[0] == locks[1]
        assert leaves(mine) == leaves(lazy)
    end = at(AGREE, "modern", "migrate_end")
    assert [leaf for leaf in leaves(end) if leaf[1] < 0x1000] == [(2, 0x200, False)]
    assert [leaf for leaf in leaves(end) if leaf[1] >= 0x1000] == [
        leaf for leaf in leaves(at(AGREE, "lazy", "migrate_end")) if leaf[1] >= 0x1000
    ]


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
            # §5.7: a read fault on a logged slot whose host page is writable maps a writable, dirty 4K spte
            # and logs the page, as in 3.x; nothing maps 0x410 before the read, so it does fault.
            "modern": {"log": [0x250, 0x260, 0x410], "lost": []},
            # §3.10: a 3.x read fault on TDP maps writable and marks the page.
            "lazy": {"log": [0x250, 0x260, 0x410], "lost": []},
            "zap": {"log": [0x250, 0x260, 0x2C0, 0x410], "lost": []},
            # §4.2: 0x200 is marked for the write to 0x250; 0x260 takes no exit.
            "lazy-buggy": {"log": [0x200, 0x410], "lost": [0x250, 0x260]},
        }
    ),
)
def test_todays_kernel_a_read_fault_is_reported(preset: str, expected: dict[str, Any]) -> None:
    read = at(TODAY, preset, "read", gfn=0x410)
    assert read.step["fault_counts"] == {"fast": 0, "slow": 1}
    assert read.step["marked_dirty"] == [0x410]
    assert (1, 0x410, True) in leaves(read)
    get = at(TODAY, preset, "get_dirty_log")
    assert get.step["dirty_log"] == expected["log"]
    assert violated(get, "written_not_logged") == expected["lost"]


def test_todays_kernel_modern_read_fault_builds_a_dirty_spte() -> None:
    # §5.7: make_spte builds W | MMU-writable | D for a writable host page, read or write.
    read = at(TODAY, "modern", "read", gfn=0x410)
    (spte,) = [s for s in read.state["sptes"] if s["leaf"] and s["gfn"] == 0x410]
    assert (spte["writable"], spte["mmu_writable"], spte["dirty"]) == (True, True, True)


def test_todays_kernel_a_read_fault_on_a_read_only_what_if_logs_nothing() -> None:
    # The what-if the lesson names: read_fault_marks_dirty=false maps the read read-only, logs nothing.
    variant = whatif("modern", read_fault_marks_dirty="false")
    read = at(TODAY, variant, "read", gfn=0x410)
    assert (read.step["marked_dirty"], (1, 0x410, False) in leaves(read)) == ([], True)
    assert at(TODAY, variant, "get_dirty_log").step["dirty_log"] == [0x250, 0x260]


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §5.7 (6.13+): both tables become read-only 2M leaves at once (L2[2]'s single leaf, 0x410, is
            # enough: "a table with a single present leaf is recovered too"), one flush for the slot; the
            # next write is a fast fault on the 2M leaf (the guard only applies while logging, §5.1).
            "modern": {
                "after_disable": [(2, 0x200, False), (2, 0x400, False)],
                "write": ("fast", "fixed", 2),
                "lpages": 2,
            },
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
        assert [e["recovered"] for e in events(disabled, "kvm_mmu_recover_huge_pages")] == [2]
        assert disabled.step["tlb_flushes"] == 1
    write = at(TODAY, preset, "write", nth=1, gfn=0x250)
    faults = [(f["path"], f["fast_result"], f["level"]) for f in write.step["faults"]]
    assert faults == ([] if expected["write"] is None else [expected["write"]])
    assert write.state["stats"]["lpages"] == expected["lpages"]


@pytest.mark.parametrize(
    ("switch", "after_disable", "write"),
    [
        # 4.1 to 6.12 (§5.3, §5.7): both tables zapped, one flush each; the write faults on a non-present
        # entry (no PRESENT: not fast, §3.9) and the slow path maps 2M.
        ("huge_page_recovery=zap_collapsible", [], ("slow", None, 2)),
        # 3.16's behaviour: the 4K tables stay; the fast path fixes 0x250's 4K spte.
        ("recover_on_disable=false", None, ("fast", "fixed", 1)),
    ],
)
def test_todays_kernel_modern_recovery_what_ifs(
    switch: str, after_disable: list[tuple[int, int, bool]] | None, write: tuple[str, str | None, int]
) -> None:
    key, value = switch.split("=")
    variant = whatif("modern", **{key: value})
    disabled = at(TODAY, variant, "disable_dirty_log")
    if after_disable is None:
        assert disabled.state["sptes"] == before(TODAY, variant, disabled).state["sptes"]
    else:
        assert leaves(disabled) == after_disable
        callers = [e["caller"] for e in events(disabled, "kvm_flush_remote_tlbs")]
        assert callers == ["zap_collapsible_spte_range"] * 2
    rewrite = at(TODAY, variant, "write", nth=1, gfn=0x250)
    assert [(f["path"], f["fast_result"], f["level"]) for f in rewrite.step["faults"]] == [write]


def test_todays_kernel_without_eager_split_splits_in_place() -> None:
    # §5.1: with eager splitting off the write fault splits the read-only 2M spte in place: a full table of
    # 512 4K sptes copying its permissions, then the written one made writable (1 RW + 511 RO).
    variant = whatif("modern", eager_split="false")
    assert leaves(at(TODAY, variant, "enable_dirty_log")) == [(2, 0x200, False)]
    write = at(TODAY, variant, "write", nth=0, gfn=0x250)
    assert [(f["path"], f["fast_result"]) for f in write.step["faults"]] == [("slow", "bail_large")]
    small = {gfn: w for level, gfn, w in leaves(write) if level == 1}
    assert sorted(small) == gfns(0x200, 512) and [gfn for gfn, w in small.items() if w] == [0x250]


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


# Under shadow paging `modern` is today's legacy shadow MMU, not the TDP MMU.
SHADOW_KERNELS = {
    **KERNELS,
    "modern": "upstream Linux 6.13 and later under shadow paging: the legacy shadow MMU",
}


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_names_the_kernel_each_preset_stands_for(name: str) -> None:
    scenario = load_scenario(name)
    text = scenario.description
    kernels = SHADOW_KERNELS if scenario.vm.mmu == "shadow" else KERNELS
    for preset, kernel in kernels.items():
        first = text.index(f"**{preset}**")
        assert text.startswith(f"**{preset}** ({kernel}", first), f"{name}: {preset} is not named as {kernel}"


# Claims the lessons once made that the spec has since corrected (kvm-mmu.md's live-kernel note, corrected
# 2026-12, and §5.7), as the lessons worded them. A guard against their return, not a substitute for the
# per-lesson tests above: each pattern is looked for sentence by sentence, and `unless` names what makes a
# sentence that matches it true after all.
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_STALE: list[tuple[str, re.Pattern[str], re.Pattern[str] | None, re.Pattern[str] | None]] = [
    # (what the spec says instead, the claim, only in sentences matching, unless)
    (
        "the live check never ran an MMU: it is no evidence for any spte or fault claim",
        re.compile(r"live[- ]kernel|as the (?:live )?kernel (?:logs|does)", re.I),
        None,
        None,
    ),
    (
        "modern is upstream 6.13 and later (§5.7), not a 6.x kernel",
        re.compile(r"\*\*modern\*\* \((?:6|today)|\b6\.x kernel|today's kernel, 6"),
        None,
        None,
    ),
    (
        "6.13+ recovers huge pages in place when logging stops (§5.7); zapping the tables is 4.1 to 6.12",
        re.compile(
            r"\b(?:zaps|zapped|zapping)\s+(?:(?:the|both|its|such|slot \d's|\d+)\s+){0,2}(?:4K\s+)?tables?\b"
        ),
        None,
        re.compile(r"zap_collapsible|6\.12|v4\.1"),
    ),
    (
        "a read fault on a writable host page maps a writable spte and logs the page, in every kernel (§3.10,"
        " §5.7); only a read that takes no fault, or one of a page not writable on the host, logs nothing",
        re.compile(
            r"not logged|marks nothing|logs nothing|not marked|does not mark|nothing (?:is )?marked"
            r"|mark nothing",
            re.I,
        ),
        re.compile(r"\breads?\b(?!-only)", re.I),
        re.compile(
            r"no exit|without an exit|no fault|takes no|hits|goes through|read_fault_marks_dirty=false"
            r"|not writable|without HW|zero page"
            # Under shadow paging a read through a clean guest PTE maps read-only and marks nothing.
            r"|clean",
            re.I,
        ),
    ),
]


@pytest.mark.parametrize("name", builtin_names())
def test_no_builtin_repeats_a_claim_the_spec_corrected(name: str) -> None:
    scenario = load_scenario(name)
    texts = [scenario.description, *(step.text for step in scenario.steps if isinstance(step, NoteStep))]
    found = []
    for text in texts:
        for sentence in _SENTENCE.split(text):
            for correction, claim, only, unless in _STALE:
                if only is not None and not only.search(sentence):
                    continue
                if claim.search(sentence) and not (unless is not None and unless.search(sentence)):
                    found.append(f"{sentence!r}: {correction}")
    assert found == []
