"""Calibrates the work estimate (engine/estimate.py): CPU time per priced unit, lesson by lesson.

The web app refuses a request whose price is over its budget, so the price must follow the CPU time the
request costs, whatever the scenario does. For every built-in lesson (grouped: each takes a few
milliseconds) and a hostile set (long harvest chains, 64 one-page slots harvested 1 500 times, 1G and 2M
pages toggled under `modern`, long flush runs, big writes, TLB hits, zaps, notes, bitmaps of a million
pages), this measures, under every preset, the CPU time of

  (a) the whole run, summary detail (what /play and /compare run), against `estimate_work`;
  (b) the run in full detail with its result JSON written (what /result.json and POST /api/run with
      "detail": "full" do), against `estimate_result(full=True)`;

and prints each case's units, the CPU of its costliest preset (the price bounds every preset), the CPU
per unit and its ratio to the median. It exits 1 unless every ratio is within 3x of the median.

    python3 benchmarks/budget.py
    python3 benchmarks/budget.py --only migrate-64-slots toggle-1g     # some cases
    python3 benchmarks/budget.py --summary-only                        # (a) alone: a quick run
    python3 benchmarks/budget.py --full-only                           # (b) alone
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run from a checkout without installing: the engine lives beside this directory.
sys.path.insert(0, str(REPO))

from engine.canonical import iterdumps  # noqa: E402
from engine.collector import gc_paused  # noqa: E402
from engine.estimate import estimate_result, estimate_work  # noqa: E402
from engine.policy import PRESETS  # noqa: E402
from engine.result import result_json  # noqa: E402
from engine.scenario import Scenario, parse_scenario  # noqa: E402
from engine.simulation import Simulation  # noqa: E402
from scenarios import builtin_scenarios  # noqa: E402

# Every ratio must be within this factor of the median, both ways.
SPREAD = 3.0
# The built-in lessons take a few ms each: each is run this many times to be timed.
LESSON_REPEAT = 20

Json = dict[str, Any]


def _scenario(memslots: list[Json], steps: list[Json], vm: Json | None = None) -> Scenario:
    raw: Json = {"format": "sptelab-scenario", "version": 1, "memslots": memslots, "steps": steps}
    if vm is not None:
        raw["vm"] = vm
    return parse_scenario(raw)


def _one_page_slots(count: int) -> list[Json]:
    return [{"id": i, "base_gfn": 0x1000 + 0x10 * i, "npages": 1} for i in range(count)]


def _slot(npages: int, host_page: str = "4K") -> list[Json]:
    return [{"id": 1, "base_gfn": 0x100000, "npages": npages, "host_page": host_page}]


def migrate_64_slots(rounds: int = 1500) -> Scenario:
    """The shape of the 4.5 KB URL: 64 one-page slots, a migration of many rounds."""
    steps: list[Json] = [{"op": "write", "gfn": 0x1000}, {"op": "migrate_begin"}]
    return _scenario(
        _one_page_slots(64), [*steps, *[{"op": "migrate_round"}] * rounds, {"op": "migrate_end"}]
    )


def _get_64_slots() -> Scenario:
    enable = [{"op": "enable_dirty_log", "slot": i} for i in range(64)]
    gets = [{"op": "get_dirty_log", "slot": i % 64} for i in range(20_000)]
    return _scenario(_one_page_slots(64), [*enable, {"op": "write", "gfn": 0x1000}, *gets])


def _get_big_bitmap() -> Scenario:
    steps = [{"op": "enable_dirty_log", "slot": 1}, {"op": "write", "gfn": 0x100000}]
    return _scenario(_slot(1 << 20), [*steps, *[{"op": "get_dirty_log", "slot": 1}] * 300])


def _harvest_chain() -> Scenario:
    """Write, GET, CLEAR the whole slot, 30 times over (manual protect's loop)."""
    rounds = [
        {"op": "write", "gfn": 0x100000, "count": 512, "stride": 128},
        {"op": "get_dirty_log", "slot": 1},
        {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 65536},
    ]
    start = [
        {"op": "write", "gfn": 0x100000, "count": 4096, "stride": 16},
        {"op": "enable_dirty_log", "slot": 1},
    ]
    return _scenario(_slot(65536), [*start, *rounds * 30])


def _toggle_1g() -> Scenario:
    """One 1G page split when logging starts and recovered when it stops (`modern`)."""
    steps = [{"op": "read", "gfn": 0x40000}, {"op": "enable_dirty_log", "slot": 1}]
    memslots = [{"id": 1, "base_gfn": 0x40000, "npages": 1 << 18, "host_page": "1G"}]
    return _scenario(memslots, [*steps, {"op": "disable_dirty_log", "slot": 1}], vm={"max_page_level": "1G"})


def _toggle_2m() -> Scenario:
    toggles = [{"op": "enable_dirty_log", "slot": 1}, {"op": "disable_dirty_log", "slot": 1}] * 4
    return _scenario(
        _slot(65536, "2M"), [{"op": "read", "gfn": 0x100000, "count": 128, "stride": 512}, *toggles]
    )


def _flush_run() -> Scenario:
    writes = [{"op": "write", "gfn": 0x100000, "count": 4096, "vcpu": v} for v in range(8)]
    return _scenario(_slot(4096), [*writes, *[{"op": "flush_tlb"}] * 30_000], vm={"vcpus": 8})


def _big_write() -> Scenario:
    return _scenario(_slot(16384), [{"op": "write", "gfn": 0x100000, "count": 16384}])


def _tlb_hits() -> Scenario:
    return _scenario(_slot(64), [{"op": "write", "gfn": 0x100000, "count": 200_000, "stride": 0}])


def _zap_run() -> Scenario:
    block: list[Json] = [{"op": "write", "gfn": 0x100000, "count": 4096}, {"op": "zap_all"}]
    return _scenario(_slot(4096), block * 3)


def _notes() -> Scenario:
    return _scenario(_one_page_slots(1), [{"op": "note", "text": "x"}] * 50_000)


def _migrate_big() -> Scenario:
    steps: list[Json] = [{"op": "write", "gfn": 0x100000}, {"op": "migrate_begin"}]
    steps += [{"op": "migrate_round"}] * 200
    return _scenario(_slot(1 << 20), [*steps, {"op": "migrate_end"}])


def _ring_resets() -> Scenario:
    return _scenario(_one_page_slots(64), [{"op": "write", "gfn": 0x1000}, {"op": "reset_dirty_ring"}] * 5000)


HOSTILE: dict[str, Callable[[], Scenario]] = {
    "migrate-64-slots": migrate_64_slots,
    "get-64-slots": _get_64_slots,
    "get-big-bitmap": _get_big_bitmap,
    "harvest-chain": _harvest_chain,
    "toggle-1g": _toggle_1g,
    "toggle-2m": _toggle_2m,
    "flush-run": _flush_run,
    "big-write": _big_write,
    "tlb-hits": _tlb_hits,
    "zap-run": _zap_run,
    "notes": _notes,
    "migrate-big-slot": _migrate_big,
    "ring-resets": _ring_resets,
}


def _cpu_summary(scenario: Scenario, preset: str) -> float:
    start = time.process_time()
    with gc_paused():
        Simulation(scenario, PRESETS[preset], detail="summary").run()
    return time.process_time() - start


def _cpu_full(scenario: Scenario, preset: str) -> float:
    start = time.process_time()
    sim = Simulation(scenario, PRESETS[preset], detail="full")
    for _piece in iterdumps(result_json(sim, sim.run(), stream=True)):
        pass
    return time.process_time() - start


def _measure(scenarios: list[Scenario], repeat: int, full: bool) -> tuple[int, float]:
    """(units, CPU seconds of the costliest preset) of running each scenario `repeat` times."""
    if full:
        units = sum(estimate_result(s, full=True) for s in scenarios) * repeat
    else:
        units = sum(estimate_work(s).total for s in scenarios) * repeat
    timer = _cpu_full if full else _cpu_summary
    cpu = max(sum(timer(s, p) for s in scenarios for _ in range(repeat)) for p in PRESETS)
    return units, cpu


def _report(title: str, rows: list[tuple[str, int, float]]) -> bool:
    per_unit = {name: cpu / units for name, units, cpu in rows}
    median = statistics.median(per_unit.values())
    print(f"\n{title}: median {median * 1e6:.2f} µs per unit")
    print(f"  {'case':<22} {'units':>11} {'CPU s':>8} {'µs/unit':>8} {'ratio':>6}")
    ok = True
    for name, units, cpu in rows:
        ratio = per_unit[name] / median
        within = 1 / SPREAD <= ratio <= SPREAD
        ok &= within
        mark = "" if within else "  OUT OF RANGE"
        print(f"  {name:<22} {units:>11,} {cpu:>8.3f} {per_unit[name] * 1e6:>8.2f} {ratio:>6.2f}{mark}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="hostile cases to run (default: all)")
    parser.add_argument("--summary-only", action="store_true", help="measure (a) alone")
    parser.add_argument("--full-only", action="store_true", help="measure (b) alone")
    args = parser.parse_args(argv)
    names = list(HOSTILE) if args.only is None else args.only
    cases: list[tuple[str, list[Scenario], int]] = []
    if args.only is None:
        # one-gig-page alone takes seconds under `modern` (it splits and recovers a gigabyte).
        lessons = builtin_scenarios()
        small = [s for name, s in lessons if name != "one-gig-page"]
        cases.append(("built-in lessons", small, LESSON_REPEAT))
        cases += [(name, [s], 1) for name, s in lessons if name == "one-gig-page"]
    cases += [(name, [HOSTILE[name]()], 1) for name in names]
    ok = True
    passes = [
        full for full in (False, True) if not ((args.summary_only and full) or (args.full_only and not full))
    ]
    for full in passes:
        rows = []
        for name, scenarios, repeat in cases:
            units, cpu = _measure(scenarios, repeat, full)
            rows.append((name, units, cpu))
            print(f"  measured {name}: {units:,} units, {cpu:.3f} s", file=sys.stderr, flush=True)
        what = "(b) full detail with its result written" if full else "(a) the whole run, summary"
        ok &= _report(what, rows)
    print(
        "\nPASS: every ratio within 3x of the median" if ok else "\nFAIL: some ratio beyond 3x of the median"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
