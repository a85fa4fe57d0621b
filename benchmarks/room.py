"""One hostile laptop in the room: attendees step through the lessons while an attacker sends heavy share
links and drops them after two seconds.

The server runs as the Docker image runs it (`sptelab serve`, one worker, the image's SPTELAB_* settings;
only the address is loopback). Each attendee is a person with a browser of its own (benchmarks/load.py's
`Attendee`: the built-in lessons, share links, compare and predict mode, 0.5-2 s between clicks), from its
own loopback address (127.0.0.10, .11, ...), as people in a room come from their own machines. The
attacker, from 127.0.0.200, sends a wave of `--wave` heavy share links every `--every` seconds: each a
fresh scenario (a new title, so no cache knows it) of the heaviest kind the server admits, a whole run of
toggling dirty logging over a 1 GiB huge page under `modern`, and closes each connection after
`--drop-after` seconds. A prober asks `/healthz` every quarter of a second from its own address.

Reported, each with its target and PASS or MISS:
- the attendees' latency p50/p95/p99 (target: p99 ≤ 1 s) and every error they saw (target: none);
- the worst `/healthz` answer (target: < 1 s);
- the server's CPU per dropped request: its CPU over the attack, less what the attendees alone used in
  the warm-up before it, over the requests dropped (the work a dropped request kept doing);
- the server's RSS over time.
A benchmark, not a test: it always exits 0. `tests/test_room_attack.py` runs a short version of it.

    python3 benchmarks/room.py                               # 20 attendees, 4 links every 15 s, 75 s
    python3 benchmarks/room.py --attendees 8 --duration 30   # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The load benchmark's server and attendees: its directory is on sys.path when this file runs as a script.
from load import (  # noqa: E402
    Attendee,
    Memory,
    Server,
    Tally,
    attendee_address,
    client_from,
    cpu_seconds,
    library,
    memory,
)
from web_latency import ms, percentile, verdict  # noqa: E402

from engine.codec import encode_scenario  # noqa: E402
from engine.estimate import estimate_work  # noqa: E402
from engine.scenario import parse_scenario  # noqa: E402

ATTENDEES = 20
DURATION_S = 75.0
WARMUP_S = 15.0
WAVE = 4
EVERY_S = 15.0
DROP_AFTER_S = 2.0
HEALTH_EVERY_S = 0.25

TARGET_P99_S = 1.0
TARGET_HEALTHZ_S = 1.0
REQUEST_TIMEOUT_S = 30.0
# The default run budget (Settings.run_budget): the attacker sends the heaviest links it admits.
RUN_BUDGET = 1_000_000


ATTACKER_ADDRESS = "127.0.0.200"
PROBE_ADDRESS = "127.0.0.201"


def heavy_scenario(nonce: int, budget: int = RUN_BUDGET) -> dict[str, Any]:
    """The heaviest link of its kind the server admits: a 1 GiB huge page mapped, then dirty logging
    switched on and off as often as the work estimate allows (under `modern` each switch splits the
    gigabyte into 262 144 4K sptes and recovers it). A new title for each nonce, so no cache knows it."""

    def build(toggles: int) -> dict[str, Any]:
        steps: list[dict[str, Any]] = [{"op": "read", "gfn": "0x40000"}]
        for _ in range(toggles):
            steps += [{"op": "enable_dirty_log", "slot": 1}, {"op": "disable_dirty_log", "slot": 1}]
        return {
            "format": "sptelab-scenario",
            "version": 1,
            "title": f"flood {nonce}",
            "vm": {"max_page_level": "1G"},
            "memslots": [
                {"id": 1, "base_gfn": "0x40000", "npages": 262144, "host_page": "1G", "base_pfn": "0x40000"}
            ],
            "steps": steps,
        }

    toggles = 1
    while estimate_work(parse_scenario(build(toggles + 1))).total <= budget and toggles < 1000:
        toggles += 1
    return build(toggles)


def heavy_link(nonce: int, budget: int = RUN_BUDGET) -> str:
    data = heavy_scenario(nonce, budget)
    return "/play?" + urlencode({"s": encode_scenario(data), "variant": "modern", "step": len(data["steps"])})


@dataclass
class Attack:
    sent: int = 0
    dropped: int = 0
    answered: int = 0
    statuses: list[int] = field(default_factory=list)


@dataclass
class Report:
    tally: Tally
    attack: Attack
    healthz: list[float]
    health_errors: list[str]
    memory: list[tuple[float, Memory]]
    cpu_warmup: float
    cpu_attack: float
    warmup_s: float
    attack_s: float
    budget: dict[str, int] = field(default_factory=dict)

    @property
    def latencies(self) -> list[float]:
        return [sample.seconds for sample in self.tally.samples]

    @property
    def cpu_per_dropped(self) -> float:
        baseline = self.cpu_warmup / self.warmup_s * self.attack_s if self.warmup_s else 0.0
        return max(0.0, self.cpu_attack - baseline) / max(1, self.attack.dropped)


async def _attacker(
    url: str, start: float, deadline: float, args: argparse.Namespace, attack: Attack
) -> None:
    nonce = 0
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    while time.monotonic() < deadline:
        wave = []
        for _ in range(args.wave):
            nonce += 1
            # Workshop mode holds each request to a quarter of the run budget (Settings.workshop_budget).
            budget = RUN_BUDGET // 4 if getattr(args, "workshop", False) else RUN_BUDGET
            wave.append(_drop(url, heavy_link(nonce, budget), args.drop_after, attack))
        await asyncio.gather(*wave)
        await asyncio.sleep(max(0.0, args.every - args.drop_after))


async def _drop(url: str, path: str, after: float, attack: Attack) -> None:
    """One heavy link, given up after `after` seconds: the connection closes, as a tab closed."""
    attack.sent += 1
    async with client_from(url, ATTACKER_ADDRESS, timeout=after) as client:
        try:
            response = await client.get(path)
        except httpx.TimeoutException:
            attack.dropped += 1
            return
        except httpx.HTTPError:
            attack.dropped += 1
            return
    attack.answered += 1
    attack.statuses.append(response.status_code)


async def _probe(url: str, deadline: float, latencies: list[float], errors: list[str]) -> None:
    async with client_from(url, PROBE_ADDRESS, timeout=10.0) as client:
        while time.monotonic() < deadline:
            before = time.perf_counter()
            try:
                response = await client.get("/healthz")
                if response.status_code != 200:
                    errors.append(f"/healthz: HTTP {response.status_code}")
            except httpx.HTTPError as error:
                errors.append(f"/healthz: {error!r}")
            latencies.append(time.perf_counter() - before)
            await asyncio.sleep(HEALTH_EVERY_S)


async def _sample(pid: int, deadline: float, samples: list[tuple[float, Memory]]) -> None:
    start = time.monotonic()
    while time.monotonic() < deadline:
        samples.append((time.monotonic() - start, memory(pid)))
        await asyncio.sleep(1.0)


async def _cpu_at(pid: int, moment: float) -> float:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))
    return cpu_seconds(pid)


async def room(server: Server, args: argparse.Namespace) -> Report:
    """Run the room against a started server."""
    scenarios = library()
    tally = Tally()
    attack = Attack()
    healthz: list[float] = []
    health_errors: list[str] = []
    samples: list[tuple[float, Memory]] = []
    start = time.monotonic()
    attack_start = start + args.warmup
    deadline = start + args.duration
    clients = [client_from(server.url, attendee_address(n)) for n in range(args.attendees)]
    try:
        people = [Attendee(n, clients[n], scenarios, tally) for n in range(args.attendees)]
        cpu_start = cpu_seconds(server.pid)
        cpu_marks = asyncio.gather(_cpu_at(server.pid, attack_start), _cpu_at(server.pid, deadline))
        work = asyncio.gather(
            *(person.run(deadline) for person in people),
            _attacker(server.url, attack_start, deadline, args, attack),
            _probe(server.url, deadline, healthz, health_errors),
            _sample(server.pid, deadline, samples),
            cpu_marks,
        )
        try:
            await asyncio.wait_for(work, args.duration + REQUEST_TIMEOUT_S + 5)
        except TimeoutError:
            tally.errors.append("the run did not end within its bound: requests were still waiting")
        cpu_at_attack, cpu_end = cpu_marks.result() if cpu_marks.done() else (cpu_start, cpu_start)
        async with client_from(server.url, PROBE_ADDRESS) as probe:
            budget = (await probe.get("/healthz/memory")).json()
    finally:
        for client in clients:
            await client.aclose()
    return Report(
        tally,
        attack,
        healthz,
        health_errors,
        samples,
        cpu_warmup=cpu_at_attack - cpu_start,
        cpu_attack=cpu_end - cpu_at_attack,
        warmup_s=args.warmup,
        attack_s=args.duration - args.warmup,
        budget=budget,
    )


def judge(report: Report) -> dict[str, bool]:
    """Each target: attendee p99, no attendee error, /healthz always answered within its bound."""
    latencies = report.latencies
    return {
        "attendee p99": bool(latencies) and percentile(latencies, 0.99) <= TARGET_P99_S,
        "attendee errors": not report.tally.errors,
        "healthz": not report.health_errors
        and bool(report.healthz)
        and max(report.healthz) < TARGET_HEALTHZ_S,
    }


def print_report(report: Report) -> None:
    latencies = report.latencies
    ok = judge(report)
    print(f"attendees: {len(latencies)} requests", end="")
    if latencies:
        print(
            f", p50 {ms(percentile(latencies, 0.5))}, p95 {ms(percentile(latencies, 0.95))},"
            f" p99 {ms(percentile(latencies, 0.99))}"
            f" (target <= {ms(TARGET_P99_S)}): {verdict(ok['attendee p99'])}"
        )
    else:
        print()
    slowest = sorted(report.tally.samples, key=lambda sample: -sample.seconds)[:5]
    if slowest:
        print(
            "  slowest: "
            + "; ".join(f"{ms(sample.seconds)} {sample.kind} {sample.url[:90]}" for sample in slowest)
        )
    print(f"attendee errors: {len(report.tally.errors)} (target: none): {verdict(ok['attendee errors'])}")
    for error in report.tally.errors[:10]:
        print(f"  {error}")
    worst = max(report.healthz) if report.healthz else float("nan")
    print(
        f"/healthz: {len(report.healthz)} probes, worst {ms(worst)}, median"
        f" {ms(statistics.median(report.healthz)) if report.healthz else '-'}"
        f" (target < {ms(TARGET_HEALTHZ_S)}),"
        f" {len(report.health_errors)} errors: {verdict(ok['healthz'])}"
    )
    attack = report.attack
    print(
        f"attacker: {attack.sent} heavy links sent, {attack.dropped} dropped after the timeout,"
        f" {attack.answered} answered ({sorted(set(attack.statuses))})"
    )
    print(
        f"server CPU: {report.cpu_warmup:.1f} s in the {report.warmup_s:.0f} s warm-up,"
        f" {report.cpu_attack:.1f} s in the {report.attack_s:.0f} s attack;"
        f" per dropped request about {report.cpu_per_dropped:.2f} s"
    )
    if report.memory:
        peak = max(sample.rss_mb for _, sample in report.memory)
        last = report.memory[-1][1].rss_mb
        trace = ", ".join(
            f"{t:.0f}s {m.rss_mb:.0f}" for t, m in report.memory[:: max(1, len(report.memory) // 12)]
        )
        print(f"server RSS (MiB): peak {peak:.0f}, at the end {last:.0f}; over time: {trace}")
    if report.budget:
        mib = {name: value / (1 << 20) for name, value in report.budget.items() if name != "evictions"}
        print(
            f"cache budget (MiB): {mib['total']:.0f} held at the end, {mib['peak']:.0f} at most,"
            f" of {mib['limit']:.0f}; {report.budget['evictions']} evictions"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attendees", type=int, default=ATTENDEES)
    parser.add_argument("--duration", type=float, default=DURATION_S, help="seconds in all, warm-up included")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds of attendees alone first")
    parser.add_argument("--wave", type=int, default=WAVE, help="heavy links per wave")
    parser.add_argument("--every", type=float, default=EVERY_S, help="seconds between waves")
    parser.add_argument("--drop-after", type=float, default=DROP_AFTER_S)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    parser.add_argument(
        "--workshop", action="store_true", help="serve in workshop mode (SPTELAB_WORKSHOP=1), as a room would"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        settings = {"SPTELAB_WORKSHOP": "1"} if args.workshop else {}
        server = Server(Path(scratch) / "server.log", workers=1, settings=settings)
        server.start()
        try:
            report = asyncio.run(room(server, args))
        finally:
            server.stop()
    print_report(report)
    if args.json:
        latencies = report.latencies
        print(
            json.dumps(
                {
                    "p50": percentile(latencies, 0.5) if latencies else None,
                    "p95": percentile(latencies, 0.95) if latencies else None,
                    "p99": percentile(latencies, 0.99) if latencies else None,
                    "healthz_worst": max(report.healthz) if report.healthz else None,
                    "errors": len(report.tally.errors),
                    "cpu_per_dropped": report.cpu_per_dropped,
                    "rss_peak_mb": max((m.rss_mb for _, m in report.memory), default=None),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
