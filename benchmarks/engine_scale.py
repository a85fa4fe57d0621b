"""How fast and how big the engine is on the largest memslot a scenario may plausibly hold.

The contract lets one scenario map 4 GiB and make 2^22 guest accesses, and the web app answers a run in one
request, so the engine has a budget: one 1 GiB memslot written in full three times over, with dirty
logging turned on in between (the pre-copy rounds of a migration), must run in at most 10 s of wall time
and 500 MB of peak RSS. The same run under shadow paging (the guest maps the slot by 2M pages, its page
tables in a small slot apart) must take at most twice the TDP run's time. This script builds that
scenario in code, steps it one step at a time as the shells do, times every step, and says whether the
budget holds. It also writes the summary result, as
`sptelab run --json --detail summary` would (to the null device), and times that apart.

It is a measurement, not a test: it always exits 0. It still checks the answer cheaply (each
GET_DIRTY_LOG must return every page of the slot, and no invariant may be violated), because a fast wrong
engine is no news.

    python3 benchmarks/engine_scale.py                   # the full 1 GiB slot, TDP then shadow paging
    python3 benchmarks/engine_scale.py --pages 32768     # a quick run on 128 MiB
    python3 benchmarks/engine_scale.py --mmu tdp         # the TDP run alone
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

# Run from a checkout without installing: the engine lives beside this directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.canonical import iterdumps
from engine.collector import gc_paused
from engine.policy import PRESETS, make_policy
from engine.result import result_json
from engine.scenario import Scenario, parse_scenario
from engine.simulation import Simulation, StepResult

DEFAULT_PAGES = 262144  # 1 GiB of 4 KiB pages
BASE_GFN = 0x100000
BASE_PFN = 0x100000
SLOT_ID = 1

TARGET_WALL_S = 10.0
TARGET_RSS_MB = 500.0
# The same accesses under shadow paging (a 1 GiB guest mapped by 2M guest pages under logging) may take at
# most twice the TDP run: the shadow MMU walks the guest's tables and has no fast path, but no more.
TARGET_SHADOW_RATIO = 2.0


# Under shadow paging the guest's page tables live in a small slot of their own, so that the big slot's
# dirty log is exactly its pages; the guest maps both at the identity addresses, the big one by 2M pages.
TABLES_SLOT_ID = 2
TABLES_GFN = 0x1000
TABLES_PAGES = 16


def build_scenario(npages: int, mmu: str = "tdp") -> Scenario:
    """One memslot of `npages` backed by 2M host pages; write it all, then two logged rounds of the same.
    Under shadow paging (`mmu` "shadow") the guest maps it by 2M guest pages, its tables in a slot apart."""
    write_all = {"op": "write", "gfn": BASE_GFN, "count": npages}
    memslots: list[dict[str, object]] = [
        {
            "id": SLOT_ID,
            "base_gfn": BASE_GFN,
            "npages": npages,
            "host_page": "2M",
            "base_pfn": BASE_PFN,
            "host_writable": True,
        }
    ]
    vm: dict[str, object] = {"vcpus": 1, "max_page_level": "2M", "ept_ad": True}
    extra: dict[str, object] = {}
    if mmu == "shadow":
        memslots.append({"id": TABLES_SLOT_ID, "base_gfn": TABLES_GFN, "npages": TABLES_PAGES})
        vm["mmu"] = "shadow"
        extra["guest"] = {"tables_at": TABLES_GFN}
    return parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "title": f"Scale: {npages} pages written three times, two dirty-log rounds ({mmu})",
            "vm": vm,
            "memslots": memslots,
            **extra,
            "steps": [
                write_all,
                {"op": "enable_dirty_log", "slot": SLOT_ID},
                write_all,
                {"op": "get_dirty_log", "slot": SLOT_ID},
                write_all,
                {"op": "get_dirty_log", "slot": SLOT_ID},
            ],
        }
    )


def peak_rss_mb() -> float:
    """Peak resident set size of this process; Linux reports ru_maxrss in KiB (macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        return peak / (1024 * 1024)
    return peak / 1024


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def check_results(steps: list[StepResult], npages: int, violations: int) -> list[str]:
    """What is wrong with the run's answers, if anything: both GETs return the whole slot, no violations."""
    problems: list[str] = []
    expected = list(range(BASE_GFN, BASE_GFN + npages))
    gets = [step for step in steps if step.op.op == "get_dirty_log"]
    if len(gets) != 2:
        problems.append(f"expected 2 get_dirty_log steps, saw {len(gets)}")
    for step in gets:
        got = step.dirty_log
        if got is None:
            problems.append(f"step {step.index}: get_dirty_log returned nothing")
        elif got != expected:
            missing = len(set(expected) - set(got))
            extra = len(set(got) - set(expected))
            problems.append(
                f"step {step.index}: get_dirty_log returned {len(got)} gfns, expected {npages}"
                f" ({missing} missing, {extra} unexpected)"
            )
    if violations:
        problems.append(f"{violations} invariant violation(s)")
    return problems


def run_mode(scenario: Scenario, npages: int, variant: str, repeat: int) -> tuple[float, list[str]]:
    """Run the scenario `repeat` times, step by step, printing each step; returns the median wall time
    (steps and summary result) and what was wrong with the answers."""
    accesses = 3 * npages
    problems: list[str] = []
    run_times: list[float] = []
    for run in range(1, repeat + 1):
        if repeat > 1:
            print(f"\nrun {run} of {repeat}")
        print(f"{'step':>4}  {'op':<17} {'wall s':>8}  {'fast':>7} {'slow':>7}  {'marked':>7} {'logged':>7}")
        # As `sptelab run` does, keep the cyclic collector out of the whole run (see engine.collector).
        with gc_paused():
            sim = Simulation(scenario, make_policy(variant), detail="summary")
            steps: list[StepResult] = []
            run_s = 0.0
            while not sim.done:
                start = time.perf_counter()
                step = sim.step()
                elapsed = time.perf_counter() - start
                run_s += elapsed
                steps.append(step)
                logged = "-" if step.dirty_log is None else str(len(step.dirty_log))
                print(
                    f"{step.index:>4}  {step.op.op!s:<17} {elapsed:>8.3f}"
                    f"  {step.fault_counts['fast']:>7} {step.fault_counts['slow']:>7}"
                    f"  {len(step.marked_dirty):>7} {logged:>7}"
                )

            start = time.perf_counter()
            written = 0
            with open(os.devnull, "w", encoding="utf-8") as sink:
                for piece in iterdumps(result_json(sim, steps, stream=True)):
                    written += sink.write(piece)
            result_s = time.perf_counter() - start

        total_s = run_s + result_s
        run_times.append(total_s)
        print(f"steps:          {run_s:.3f} s ({accesses / run_s:,.0f} accesses/s)")
        print(
            f"summary result: {result_s:.3f} s, {written / 1e6:.0f} MB of JSON"
            " (what `sptelab run --json --detail summary` adds)"
        )
        print(f"total:          {total_s:.3f} s")

        found = check_results(steps, npages, len(sim.violations))
        problems.extend(f"run {run}: {p}" if repeat > 1 else p for p in found)
        del sim, steps
    if repeat > 1:
        shown = ", ".join(f"{t:.3f}" for t in run_times)
        print(f"runs: {shown} s (best {min(run_times):.3f}, worst {max(run_times):.3f})")
    # A shared 2-core VM varies by a third between identical runs: judge the median, show the spread.
    return statistics.median(run_times), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--pages",
        type=int,
        default=DEFAULT_PAGES,
        help=f"pages in the memslot (default {DEFAULT_PAGES}, 1 GiB)",
    )
    parser.add_argument(
        "--variant", default="lazy", choices=list(PRESETS), help="policy preset (default lazy)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="how many times to run it (default 3); the verdict is on the median run",
    )
    parser.add_argument(
        "--mmu",
        default="both",
        choices=["tdp", "shadow", "both"],
        help="the TDP run, the shadow-paging run, or both and their ratio (default both)",
    )
    args = parser.parse_args(argv)
    if args.pages < 1:
        parser.error("--pages must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    npages: int = args.pages
    modes = ["tdp", "shadow"] if args.mmu == "both" else [args.mmu]
    walls: dict[str, float] = {}
    problems: list[str] = []
    for mmu in modes:
        t0 = time.perf_counter()
        scenario = build_scenario(npages, mmu)
        parse_s = time.perf_counter() - t0
        print(
            f"engine scale ({mmu}): {npages} pages ({npages * 4 // 1024} MiB), 2M host pages,"
            f" variant {args.variant}, {3 * npages} accesses; scenario parsed in {parse_s:.3f} s"
        )
        walls[mmu], found = run_mode(scenario, npages, args.variant, args.repeat)
        problems.extend(f"{mmu}: {p}" for p in found)
        print()

    rss = peak_rss_mb()
    for mmu, wall in walls.items():
        within = verdict(wall <= TARGET_WALL_S * (TARGET_SHADOW_RATIO if mmu == "shadow" else 1))
        target = TARGET_WALL_S * (TARGET_SHADOW_RATIO if mmu == "shadow" else 1)
        print(f"wall time {mmu:<6}  {wall:.3f} s (median)   target <= {target:g} s: {within}")
    if len(walls) == 2:
        ratio = walls["shadow"] / walls["tdp"]
        print(
            f"shadow / tdp:     {ratio:.2f}   target <= {TARGET_SHADOW_RATIO:g}:"
            f" {verdict(ratio <= TARGET_SHADOW_RATIO)}"
        )
    print(f"peak RSS:         {rss:.0f} MB   target <= {TARGET_RSS_MB:g} MB: {verdict(rss <= TARGET_RSS_MB)}")
    if problems:
        for problem in problems:
            print(f"results: WRONG: {problem}")
    else:
        print("results: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
