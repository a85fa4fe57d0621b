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
from conftest import GOLDEN, per_preset, run_scenario, spte_at

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
    # The live-kernel note (2); migrate_end disables logging and recovery zaps the 4K table at once
    # (§5.3: "the PDE for the region becomes non-present"), so no leaf is left until the next fault.
    "modern": {"logs": ([0x250, 0x260, 0x2C0], [0x250, 0x300]), "leaves": [], "lpages": 0, "lost": []},
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
        # §7.2 steps 7 and 9: every 4K spte write-protected by the GET that reported it, HW and MW kept.
        for spte in result["final"]["sptes"]:
            if spte["leaf"]:
                assert (spte["writable"], spte["host_writable"], spte["mmu_writable"]) == (False, True, True)
        assert result["final"]["violations"] == []  # Acceptance: zap and lazy end with none
    # Summary detail: no per-fault rows, spte writes or trace events (contract §4).
    assert all("spte_changes" not in s and "events" not in s and "faults" not in s for s in steps)


# --- a copy-on-write large spte under logging (§7.3 edge case) ----------------------------------------------


COW = {
    # §7.3 edge case: the slow path drops the large spte (a flush, §3.2) and maps gfn 0x250 at 4K; the
    # flushes: enable, that drop, and the GET.
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
    assert value(result, 1, 0x200, 0x50) == 0x80050F75  # §1.3 4K leaf + D (written) − W
    assert value(result, 1, 0x200, 0x60) == 0x80060F75
    assert result["final"]["stats"]["lpages"] == 0
    assert result["final"]["stats"]["remote_tlb_flush"] == expected["flushes"]
    assert result["final"]["violations"] == []
    assert result["final"]["migration"] is None


# --- 4K prefetch (§3.10 direct_pte_prefetch) ----------------------------------------------------------------

# §1.3: a 4K leaf is R W X MT IPAT A HW MW = 0xD77 over the pfn; a prefetched one is speculative, so it has
# no A bit (0xC77); dirty-log write protection takes W (0x2) away.
FAULTED, PREFETCHED, W = 0xD77, 0xC77, 0x2


def leaf_value(pfn: int, low: int) -> int:
    return pfn << 12 | low


def test_prefetch_4k(preset: str) -> None:
    result = check("prefetch-4k", preset)
    read_5, enable, write_22, get, _disable, read_25 = result["steps"]
    sp = 0x1000  # the level-1 sp for gfns 0x1000-0x11ff; entry i maps gfn 0x1000 + i, pfn 0x80000 + i
    # §3.10: the read of 0x1005 fills the empty entries 0-4 of its group (the run ends at the faulting
    # entry); 6 and 7 lie after it and stay empty. Logging is off, so nothing is marked.
    assert read_5["fault_counts"] == {"fast": 0, "slow": 1}
    assert read_5["marked_dirty"] == []
    # §3.5: enabling logging write-protects all six.
    for index in range(5):
        assert value(result, 1, sp, index) == leaf_value(0x80000 + index, PREFETCHED & ~W)
    assert value(result, 1, sp, 5) == leaf_value(0x80005, FAULTED & ~W)
    assert value(result, 1, sp, 6) is None
    assert value(result, 1, sp, 7) is None
    assert enable["tlb_flushes"] == 1
    # §3.10: no prefetch under logging: the write maps 0x1022 alone and marks it.
    assert write_22["marked_dirty"] == [0x1022]
    assert get["dirty_log"] == [0x1022]
    # §1.3 4K leaf, written (+ D), then write-protected by the GET (§3.6).
    assert value(result, 1, sp, 0x22) == leaf_value(0x80022, (FAULTED | 0x200) & ~W)
    # Logging off again: the read of 0x1025 prefetches 0x20-0x21 (a run ending at the present 0x22) and
    # 0x23-0x24 (a run ending at the faulting entry); 0x26-0x27 lie after the fault and stay empty.
    assert read_25["marked_dirty"] == []
    for index in (0x20, 0x21, 0x23, 0x24):
        assert value(result, 1, sp, index) == leaf_value(0x80000 + index, PREFETCHED)
    assert value(result, 1, sp, 0x25) == leaf_value(0x80025, FAULTED)
    assert value(result, 1, sp, 0x26) is None
    assert value(result, 1, sp, 0x27) is None
    assert [index for _, sp_gfn, index in leaves(result) if sp_gfn == sp] == [*range(6), *range(0x20, 0x26)]
    assert result["final"]["stats"]["lpages"] == 0
    assert result["final"]["violations"] == []
