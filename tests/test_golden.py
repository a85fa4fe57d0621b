"""Golden results: whole contract §4 results (summary detail) kept in tests/golden/, one per scenario and
preset, compared byte for byte by one helper.

`SPTELAB_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py` rewrites them. A rewritten golden file is
reviewed against kvm-mmu.md before it is committed; each test below also asserts the values that matter
on its own, naming the spec section that fixes them, so that a regenerated file cannot quietly carry a
wrong value past those.

Scenario inputs: the built-in `scenarios/worked-example.json`, and `tests/golden/NAME.scenario.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from conftest import GOLDEN, LAYOUT_6X, layout, per_preset, run_scenario, spte_at

from engine.canonical import dumps

UPDATE = os.environ.get("SPTELAB_UPDATE_GOLDEN") == "1"


def check(name: str, variant: str) -> dict[str, Any]:
    """Run scenario `name` under preset `variant` (summary detail) and compare the result with
    tests/golden/NAME.VARIANT.json, or rewrite that file when updating. Returns the result."""
    _, _, result = run_scenario(name, variant, detail="summary")
    text = dumps(result)
    path = GOLDEN / f"{name}.{variant}.json"
    if UPDATE:
        path.write_text(text, encoding="utf-8")
        return result
    assert path.is_file(), f"{path.name} is missing: run with SPTELAB_UPDATE_GOLDEN=1 and review it"
    expected = path.read_text(encoding="utf-8")
    assert json.loads(text) == json.loads(expected), f"{path.name}: the result changed"
    assert text == expected, f"{path.name}: same values, different bytes"
    return result


def value(result: dict[str, Any], level: int, sp_gfn: int, index: int) -> int | None:
    found = spte_at(result, level, sp_gfn, index)
    return None if found is None else int(found["value"], 16)


def leaves(result: dict[str, Any]) -> list[tuple[int, int, int]]:
    return [(s["level"], s["sp_gfn"], s["index"]) for s in result["final"]["sptes"] if s["leaf"]]


def invariants(result: dict[str, Any]) -> set[str]:
    return {v["invariant"] for v in result["final"]["violations"]}


# --- the worked example (§7) ----------------------------------------------------------------------------

L1 = [(1, 0x200, index) for index in (0x50, 0x60, 0xC0, 0x100)]
L6 = LAYOUT_6X

WORKED = {
    # §7.2: dirty logs of rounds 1 and 2 (indexes 7 and 10), the leaves at the end, what the migration lost.
    "zap": {"logs": ([0x250, 0x260, 0x2C0], [0x250, 0x300]), "leaves": L1, "lpages": 0, "lost": []},
    "lazy-buggy": {
        "logs": ([0x200], []),
        "leaves": [(2, 0, 1)],  # the 2M spte, writable since step 5, never write-protected again
        "lpages": 1,
        "lost": [0x250, 0x260, 0x2C0, 0x300],  # §7.2 step 9, last paragraph
    },
    "lazy": {"logs": ([0x250, 0x260, 0x2C0], [0x250, 0x300]), "leaves": L1, "lpages": 0, "lost": []},
    # modern: every write after the split at enable is a fault that logs its page (§5.2); migrate_end
    # disables logging and the 4K table becomes a 2M leaf again at once (§5.7 "disable logging"), built
    # from its first leaf, gfn 0x200's, read-only since the split: R X PS A D HW MW in the 6.x layout.
    "modern": {
        "logs": ([0x250, 0x260, 0x2C0], [0x250, 0x300]),
        "leaves": [(2, 0, 1)],
        "lpages": 1,
        "lost": [],
        "l2_1": L6.leaf(0x80000, L6.PS | L6.A | L6.D | L6.HW | L6.MW),
    },
}


@pytest.mark.parametrize(("preset", "expected"), per_preset(WORKED))
def test_worked_example(preset: str, expected: dict[str, Any]) -> None:
    result = check("worked-example", preset)
    steps = result["steps"]
    assert (steps[7]["dirty_log"], steps[10]["dirty_log"]) == expected["logs"]
    assert leaves(result) == expected["leaves"]
    assert result["final"]["stats"]["lpages"] == expected["lpages"]  # §7.3 large-page count
    assert result["final"]["migration"]["lost"] == expected["lost"]
    if preset == "lazy-buggy":
        # §7.2 step 5 (b): R W X PS A D HW MW; Acceptance: it ends with written_not_logged.
        assert value(result, 2, 0, 1) == 0x80000FF7
        assert "written_not_logged" in invariants(result)
    else:
        if preset == "modern":
            assert value(result, 2, 0, 1) == expected["l2_1"]
            stats = result["final"]["stats"]
            # §5.7 "stats": 1 slow fault (step 1) and 5 fast ones, all fixed; one 2M page at the end.
            got = [stats[k] for k in ("pages_2m", "pages_4k", "pf_taken", "pf_fixed", "pf_fast", "exits")]
            assert got == [1, 0, 6, 6, 5, 6]
        # §7.2 steps 7 and 9: every 4K spte write-protected by the GET that reported it, HW and MW kept
        # (modern's recovered 2M leaf too: it has its first child's bits).
        for spte in result["final"]["sptes"]:
            if spte["leaf"]:
                assert (spte["writable"], spte["host_writable"], spte["mmu_writable"]) == (False, True, True)
        assert result["final"]["violations"] == []  # Acceptance: zap and lazy end with none
    # Summary detail: no per-fault rows, spte writes or trace events (contract §4).
    assert all("spte_changes" not in s and "events" not in s and "faults" not in s for s in steps)


# --- a copy-on-write large spte under logging (§7.3 edge case) ----------------------------------------------


COW = {
    # §7.3 edge case, on a host page the process owns alone (host_cow "reuse", so no mmu notifier, §5.8):
    # the slow path drops the large spte (a flush, §3.2) and maps gfn 0x250 at 4K; the flushes: enable,
    # that drop, and the GET.
    "zap": {"write_flushes": 1, "leaves": [(1, 0x200, 0x50), (1, 0x200, 0x60)], "flushes": 3},
    "lazy-buggy": {"write_flushes": 1, "leaves": [(1, 0x200, 0x50), (1, 0x200, 0x60)], "flushes": 3},
    "lazy": {"write_flushes": 1, "leaves": [(1, 0x200, 0x50), (1, 0x200, 0x60)], "flushes": 3},
    # Eager splitting (§5.2) already split it, read-only and without HW like the large spte, when logging
    # started: the slow path finds the 4K spte and rebuilds it writable in place (same pfn), nothing to
    # drop, no flush; all 512 4K sptes stay.
    "modern": {"write_flushes": 0, "leaves": [(1, 0x200, index) for index in range(512)], "flushes": 2},
}


@pytest.mark.parametrize(("preset", "expected"), per_preset(COW))
def test_cow_large_logging(preset: str, expected: dict[str, Any]) -> None:
    lay = layout(preset)
    result = check("cow-large-logging", preset)
    read, enable, write_250, write_260, get = result["steps"]
    # §3.8: the read maps the whole 2M range with one slow fault; §1.3: the host page is not writable, so
    # the leaf has no HW, and so no W or MW (its value is checked in test_policy_switches).
    assert read["fault_counts"] == {"fast": 0, "slow": 1}
    assert read["marked_dirty"] == []  # logging is off
    # §3.5: enabling logging flushes unconditionally; the large spte is left alone (not W), in every
    # variant (§3.3 consequences, §7.3 edge case).
    assert enable["tlb_flushes"] == 1
    # §7.3 edge case: the fast path refuses it (no HW), the slow path drops it (a flush, §3.2) and maps
    # gfn 0x250 at 4K; a write fault broke COW first, so the new spte has HW (How to use: copy-on-write).
    assert write_250["fault_counts"] == {"fast": 0, "slow": 1}
    assert write_250["tlb_flushes"] == expected["write_flushes"]
    assert write_250["marked_dirty"] == [0x250]
    assert write_260["fault_counts"] == {"fast": 0, "slow": 1}
    assert write_260["marked_dirty"] == [0x260]
    # §3.6: GET returns both and write-protects them (W off, HW and MW kept), with one flush.
    assert get["dirty_log"] == [0x250, 0x260]
    assert get["tlb_flushes"] == 1
    assert leaves(result) == expected["leaves"]
    # §1.3 4K leaf + D (written; 6.x: built dirty) − W: 0x80050F75 in the 3.x layout.
    assert value(result, 1, 0x200, 0x50) == lay.leaf(0x80050, lay.A | lay.D | lay.HW | lay.MW)
    assert value(result, 1, 0x200, 0x60) == lay.leaf(0x80060, lay.A | lay.D | lay.HW | lay.MW)
    # The table under L2[1], as link_shadow_page (3.x) or the split's tdp_mmu_link_sp (6.x) builds its
    # pointer: §1.3's "addr | 0x107", and the 6.x present bits (6.12 spte.c, make_nonleaf_spte).
    pointer = spte_at(result, 2, 0, 1)
    assert pointer is not None and not pointer["leaf"]
    assert int(pointer["value"], 16) == lay.nonleaf(pointer["pfn"])
    if preset == "modern":
        # The 510 pages the guest never wrote keep the split's copy of the large spte: R X A, no HW.
        assert value(result, 1, 0x200, 0) == lay.leaf(0x80000, lay.A)
        assert result["final"]["stats"]["pages_4k"] == 512
    assert result["final"]["stats"]["lpages"] == 0
    assert result["final"]["stats"]["remote_tlb_flush"] == expected["flushes"]
    assert result["final"]["violations"] == []
    assert result["final"]["migration"] is None


# --- 4K prefetch (§3.10 direct_pte_prefetch) ----------------------------------------------------------------

PREFETCH = {
    # §3.10: the read of 0x1005 fills the empty entries 0-4 of its group (the run ends at the faulting
    # entry); 6 and 7 lie after it and stay empty. Logging off again, the read of 0x1025 prefetches 0x20-0x21
    # (a run ending at the present 0x22) and 0x23-0x24 (a run ending at the faulting entry); 0x26-0x27 lie
    # after the fault and stay empty.
    "zap": [0, 1, 2, 3, 4, 0x20, 0x21, 0x23, 0x24],
    "lazy-buggy": [0, 1, 2, 3, 4, 0x20, 0x21, 0x23, 0x24],
    "lazy": [0, 1, 2, 3, 4, 0x20, 0x21, 0x23, 0x24],
    # §5.7 "neighbour prefetch": the TDP MMU never prefetches; each fault maps its own page alone.
    "modern": [],
}


@pytest.mark.parametrize(("preset", "prefetched"), per_preset(PREFETCH))
def test_prefetch_4k(preset: str, prefetched: list[int]) -> None:
    lay = layout(preset)
    # §1.3: a 4K leaf built by a fault is R W X MT IPAT A HW MW over the pfn (6.x: also D, §5.7); a
    # prefetched one is speculative, so it has no A bit; dirty-log write protection takes W away.
    built_d = lay.D if lay is LAYOUT_6X else 0

    def faulted(pfn: int, bits: int) -> int:
        return lay.leaf(pfn, lay.A | lay.HW | lay.MW | bits)

    def speculative(pfn: int, bits: int) -> int:
        return lay.leaf(pfn, lay.HW | lay.MW | bits)

    result = check("prefetch-4k", preset)
    read_5, enable, write_22, get, _disable, read_25 = result["steps"]
    sp = 0x1000  # the level-1 sp for gfns 0x1000-0x11ff; entry i maps gfn 0x1000 + i, pfn 0x80000 + i
    assert read_5["fault_counts"] == {"fast": 0, "slow": 1}
    assert read_5["marked_dirty"] == []  # logging is off
    # §3.5: enabling logging write-protects what the read mapped.
    for index in (i for i in prefetched if i < 8):
        assert value(result, 1, sp, index) == speculative(0x80000 + index, built_d)
    assert value(result, 1, sp, 5) == faulted(0x80005, built_d)
    assert enable["tlb_flushes"] == 1
    # §3.10: no prefetch under logging: the write maps 0x1022 alone and marks it.
    assert write_22["marked_dirty"] == [0x1022]
    assert get["dirty_log"] == [0x1022]
    # §1.3 4K leaf, written (+ D), then write-protected by the GET (§3.6).
    assert value(result, 1, sp, 0x22) == faulted(0x80022, lay.D)
    assert read_25["marked_dirty"] == []
    for index in (i for i in prefetched if i >= 0x20):
        assert value(result, 1, sp, index) == speculative(0x80000 + index, lay.W | built_d)
    assert value(result, 1, sp, 0x25) == faulted(0x80025, lay.W | built_d)
    expected = sorted({*prefetched, 5, 0x22, 0x25})
    assert [index for _, sp_gfn, index in leaves(result) if sp_gfn == sp] == expected
    assert result["final"]["stats"]["lpages"] == 0
    assert result["final"]["violations"] == []
