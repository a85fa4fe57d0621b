"""How fast the web app steps the player through a long scenario, and how big its pages are.

A person stepping through a 10 000-step scenario with the arrow keys must not wait longer at step 9 990 than
at step 10, and a link that opens step 9 980 must not take ages. This script starts the app as the browser
tests do (one uvicorn worker on a free loopback port), builds a 10 000-step scenario in code, gets its share
code from `POST /api/encode`, and measures over HTTP, on 127.0.0.1 only:

  (a) a partial (htmx) player step at step ~10 against one at step ~9 990, both warm: the median ratio;
  (b) the first visit of step 9 980 while no run of the scenario is cached (each preset once);
  (c) the p95 latency of partial steps while 8 concurrent clients each step forward from their own place;
  (d) the size of the full player page, for the worked example and for the long scenario.

Each number is printed with its target and PASS or MISS, with the server's resident memory before and after.
It is a measurement, not a test: it always exits 0.

The long scenario repeats a varied block of steps, because its share code has to fit in a URL (the app
answers 414 beyond 8 KiB, contract §5) and DEFLATE only makes repeated text that small.

    python3 benchmarks/web_latency.py
    python3 benchmarks/web_latency.py --duration 5 --samples 15     # a quick run
    python3 benchmarks/web_latency.py --cold-only                   # (b) alone
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

REPO = Path(__file__).resolve().parent.parent
# Run from a checkout without installing: the engine lives beside this directory.
sys.path.insert(0, str(REPO))

from engine.collector import gc_paused  # noqa: E402
from engine.policy import make_policy  # noqa: E402
from engine.scenario import parse_scenario  # noqa: E402
from engine.simulation import Simulation  # noqa: E402

PRESETS = ("zap", "lazy-buggy", "lazy", "modern")

STEPS = 10_000
NPAGES = 8192  # 32 MiB: sixteen 2M ranges
BASE_GFN = 0x200000
BASE_PFN = 0x100000
SLOT = 1
BLOCK = 100  # steps in the repeated block
SEED = 20140417

LOW_STEP, HIGH_STEP, COLD_STEP = 10, 9990, 9980
WINDOW = 5  # steps rotated through at each end in (a)

TARGET_RATIO = 2.0
TARGET_COLD_S = 2.0
TARGET_P95_MS = 100.0
TARGET_PAGE_KB = 200.0

STARTUP_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 60.0
MAX_REQUESTS_PER_CLIENT = 20_000


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------------------------------------------------
# The scenario


def _access(rng: random.Random, vcpus: int) -> dict[str, Any]:
    """A read or a write of one page or a short run of pages, anywhere in the slot."""
    op = "write" if rng.random() < 0.55 else "read"
    count = rng.choice((1, 1, 1, 1, 1, 1, 2, 3, 4, 8))
    stride = rng.choice((1, 1, 1, 7, 64, 512))
    while (count - 1) * stride >= NPAGES:
        count //= 2
    gfn = BASE_GFN + rng.randrange(NPAGES - (count - 1) * stride)
    step: dict[str, Any] = {"op": op, "gfn": hex(gfn)}
    if count > 1:
        step.update(count=count, stride=stride)
    if vcpus > 1:
        step["vcpu"] = rng.randrange(vcpus)
    return step


def _block(rng: random.Random, length: int, vcpus: int) -> list[dict[str, Any]]:
    """One block: accesses with logging off, then a logged stretch with GET_DIRTY_LOG rounds and TLB
    flushes, then logging off again, so the block can follow itself."""
    enable_at = length // 4
    disable_at = length - length // 8
    steps: list[dict[str, Any]] = []
    for position in range(length):
        if position == enable_at:
            steps.append({"op": "enable_dirty_log", "slot": SLOT})
        elif position == disable_at:
            steps.append({"op": "disable_dirty_log", "slot": SLOT})
        elif enable_at < position < disable_at and rng.random() < 0.08:
            steps.append({"op": "get_dirty_log", "slot": SLOT})
        elif rng.random() < 0.03:
            steps.append({"op": "flush_tlb"})
        elif position == length - 1:
            steps.append({"op": "note", "text": "Logging is off again; the block repeats."})
        else:
            steps.append(_access(rng, vcpus))
    return steps


def build_scenario(steps: int = STEPS, vcpus: int = 2) -> dict[str, Any]:
    """A valid scenario (contract §1) of `steps` steps on one 2M-backed slot of NPAGES pages."""
    rng = random.Random(SEED)
    block = _block(rng, BLOCK, vcpus)
    body = [block[k % BLOCK] for k in range(steps)]
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "title": f"Benchmark: {steps} steps over a {NPAGES * 4 // 1024} MiB slot",
        "description": "Reads and writes, dirty logging on and off, GET_DIRTY_LOG rounds and TLB flushes.",
        "vm": {"vcpus": vcpus, "max_page_level": "2M", "ept_ad": True},
        "memslots": [
            {"id": SLOT, "base_gfn": hex(BASE_GFN), "npages": NPAGES, "host_page": "2M",
             "base_pfn": hex(BASE_PFN), "host_writable": True}
        ],
        "steps": body,
    }  # fmt: skip


def engine_seconds(scenario: dict[str, Any], variant: str, until: int) -> float:
    """How long the engine alone takes for the first `until` steps, untraced as the player's summary pass
    runs them: the floor under a cold visit."""
    parsed = parse_scenario(scenario)
    start = time.perf_counter()
    with gc_paused():
        sim = Simulation(parsed, make_policy(variant), detail="summary")
        for _ in range(until):
            sim.step()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------
# The server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc/PID/status."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(rest.split()[0])
    except OSError:
        pass
    return found


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Stop a server the benchmark started: terminate, then kill if it lingers; nothing if it is gone."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@dataclass
class Server:
    log_path: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # As `sptelab serve` runs it: one uvicorn worker, no access log.
        command = [
            sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer /healthz in {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.process)

    def memory(self) -> str:
        if self.process is None:
            return "?"
        mem = memory_kb(self.process.pid)
        rss, hwm = mem.get("VmRSS"), mem.get("VmHWM")
        if rss is None:
            return "unknown"
        peak = f", peak {hwm / 1024:.0f} MB" if hwm is not None else ""
        return f"{rss / 1024:.0f} MB{peak}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# ---------------------------------------------------------------------------------------------------------
# Measurements

HX = {"HX-Request": "true"}


def play_path(code: str | None, variant: str, step: int, scenario: str | None = None) -> str:
    source = {"scenario": scenario} if scenario else {"s": code}
    return "/play?" + urlencode({**source, "variant": variant, "step": step})


def timed_get(client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> tuple[float, int]:
    """Seconds until the whole response arrived, and its body size; raise on anything but 200."""
    start = time.perf_counter()
    response = client.get(path, headers=headers)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"GET {path[:80]}… answered {response.status_code}: {response.text[:200]}")
    return elapsed, len(response.content)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def measure_cold(client: httpx.Client, code: str, step: int) -> float:
    print(f"\n(b) first visit of step {step}, full page, no run of the scenario cached")
    worst = 0.0
    for variant in PRESETS:
        elapsed, size = timed_get(client, play_path(code, variant, step))
        worst = max(worst, elapsed)
        print(f"    {variant:<11} {elapsed:7.3f} s  ({size / 1024:.0f} KB)   target <= {TARGET_COLD_S:g} s:"
              f" {verdict(elapsed <= TARGET_COLD_S)}")  # fmt: skip
    print(f"    worst: {worst:.3f} s   target <= {TARGET_COLD_S:g} s: {verdict(worst <= TARGET_COLD_S)}")
    return worst


def measure_warm_ratio(client: httpx.Client, code: str, variant: str, samples: int) -> float:
    low = [LOW_STEP + k for k in range(WINDOW)]
    high = [HIGH_STEP - WINDOW + 1 + k for k in range(WINDOW)]
    print(f"\n(a) partial step render, warm, {variant}:"
          f" steps {low[0]}-{low[-1]} against {high[0]}-{high[-1]}")  # fmt: skip
    vary = client.get(play_path(code, variant, low[0]), headers=HX).headers.get("vary", "")
    for _ in range(2):  # warm every step of both windows
        for step in low + high:
            timed_get(client, play_path(code, variant, step), HX)
    low_times: list[float] = []
    high_times: list[float] = []
    sizes: dict[str, int] = {}
    for k in range(samples):
        for name, steps, times in (("low", low, low_times), ("high", high, high_times)):
            elapsed, size = timed_get(client, play_path(code, variant, steps[k % WINDOW]), HX)
            times.append(elapsed)
            sizes[name] = size
    full_elapsed, full_size = timed_get(client, play_path(code, variant, low[0]))
    low_median, high_median = statistics.median(low_times), statistics.median(high_times)
    ratio = high_median / low_median
    print(f"    step ~{LOW_STEP:<5} median {ms(low_median)}, p90 {ms(percentile(low_times, 0.9))}"
          f" ({samples} samples, {sizes['low'] / 1024:.0f} KB partial)")  # fmt: skip
    print(f"    step ~{HIGH_STEP:<5} median {ms(high_median)}, p90 {ms(percentile(high_times, 0.9))}"
          f" ({samples} samples, {sizes['high'] / 1024:.0f} KB partial)")  # fmt: skip
    print(f"    (a full page at step {low[0]}: {ms(full_elapsed)}, {full_size / 1024:.0f} KB;"
          f" partial response Vary: {vary or '(none)'})")  # fmt: skip
    print(f"    ratio {ratio:.2f}x   target <= {TARGET_RATIO:g}x: {verdict(ratio <= TARGET_RATIO)}")
    return ratio


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (status line, headers, Content-Length body); return the status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _client_loop(
    base_url: str, code: str, variant: str, start_step: int, total_steps: int, deadline: float, tally: Tally
) -> None:
    """One attendee stepping forward over a kept-alive connection.

    The requests are written as raw bytes built before the clock starts, and the answers read with
    asyncio streams: eight clients share one event loop on the server's own 2-core machine, and a client
    that spends milliseconds parsing a 6 KB URL per request would queue the other clients' answers and
    report its own CPU time as server latency."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    requests = [
        (
            f"GET {play_path(code, variant, step)} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "HX-Request: true\r\nConnection: keep-alive\r\n\r\n"
        ).encode("latin-1")
        for step in range(total_steps + 1)
    ]
    reader, writer = await asyncio.open_connection(host, int(port))
    step = start_step
    try:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= deadline:
                return
            start = time.perf_counter()
            try:
                writer.write(requests[step])
                await writer.drain()
                status = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT_S)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as error:
                tally.errors.append(f"step {step}: {error!r}")
                return
            tally.latencies.append(time.perf_counter() - start)
            if status != 200:
                tally.errors.append(f"step {step}: HTTP {status}")
            step = step + 1 if step < total_steps else 0
    finally:
        writer.close()


async def _concurrent(
    base_url: str, code: str, variant: str, starts: list[int], duration: float, total_steps: int
) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + duration
    await asyncio.gather(
        *(_client_loop(base_url, code, variant, start, total_steps, deadline, tally) for start in starts)
    )
    return tally


def measure_concurrent(
    base_url: str, code: str, variant: str, clients: int, duration: float, total_steps: int
) -> float:
    print(f"\n(c) {clients} clients stepping forward from their own steps, partial renders, {variant},"
          f" {duration:g} s")  # fmt: skip
    # One client alone first, from a place of its own: the service time that concurrency queues behind.
    alone = asyncio.run(
        _concurrent(base_url, code, variant, [total_steps // 3 + 3], min(3.0, duration), total_steps)
    ).latencies
    if alone:
        print(f"    one client alone: {len(alone)} requests, p50 {ms(percentile(alone, 0.5))},"
              f" p95 {ms(percentile(alone, 0.95))}")  # fmt: skip
    starts = [(k * total_steps) // clients + 7 for k in range(clients)]
    start = time.perf_counter()
    tally = asyncio.run(_concurrent(base_url, code, variant, starts, duration, total_steps))
    wall = time.perf_counter() - start
    times = tally.latencies
    if not times:
        print("    no request completed: MISS")
        return float("inf")
    p95 = percentile(times, 0.95)
    rate = len(times) / wall
    print(f"    {len(times)} requests in {wall:.1f} s ({rate:.0f}/s), {len(tally.errors)} errors")
    print(f"    p50 {ms(percentile(times, 0.5))}, p90 {ms(percentile(times, 0.9))},"
          f" p99 {ms(percentile(times, 0.99))}, max {ms(max(times))}")  # fmt: skip
    for error in tally.errors[:5]:
        print(f"    error: {error}")
    ok = p95 * 1000 <= TARGET_P95_MS and not tally.errors
    print(f"    p95 {ms(p95)}   target <= {TARGET_P95_MS:g} ms: {verdict(ok)}")
    return p95


def measure_sizes(client: httpx.Client, code: str, total_steps: int) -> float:
    print("\n(d) full player page size, HTML as the browser parses it (KB per preset)")
    pages: list[tuple[str, str | None, str | None, int]] = [
        ("worked example", None, "worked-example", step) for step in (0, 5, 12)
    ]
    pages += [(f"{total_steps}-step scenario", code, None, step) for step in (0, total_steps // 2, HIGH_STEP)]
    print(f"    {'page':<36}" + "".join(f"{variant:>12}" for variant in PRESETS))
    largest = 0
    for label, page_code, name, step in pages:
        sizes: list[str] = []
        for variant in PRESETS:
            path = play_path(page_code, variant, step, scenario=name)
            response = client.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"GET {label} step {step} ({variant}) answered {response.status_code}")
            size = len(response.content)
            largest = max(largest, size)
            sizes.append(f"{size / 1024:12.1f}")
        print(f"    {label + f', step {step}':<36}" + "".join(sizes))
    kb = largest / 1024
    print(f"    largest {kb:.1f} KB   target <= {TARGET_PAGE_KB:g} KB: {verdict(kb <= TARGET_PAGE_KB)}")
    return kb


def run(args: argparse.Namespace) -> None:
    scenario = build_scenario(args.steps)
    accesses = sum(step.get("count", 1) for step in scenario["steps"] if step["op"] in ("read", "write"))
    print(f"web latency: {args.steps} steps, {accesses} guest accesses, one {NPAGES}-page 2M-backed slot")
    if not args.skip_engine_reference:
        floors = ", ".join(
            f"{variant} {engine_seconds(scenario, variant, COLD_STEP):.3f} s" for variant in PRESETS
        )
        print(f"engine alone (untraced, as the summary pass), first {COLD_STEP} steps: {floors}")

    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    server = Server(artifacts / "web-latency-server.log")
    server.start()
    try:
        print(f"server: {server.url}, pid {server.process.pid if server.process else '?'},"
              f" log {server.log_path}")  # fmt: skip
        print(f"server memory before: {server.memory()}")
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            # Compile the templates on a small page, so (b) measures the run, not the first import.
            timed_get(client, play_path(None, "lazy", 1, scenario="worked-example"))
            response = client.post("/api/encode", json={"scenario": scenario})
            if response.status_code != 200:
                raise RuntimeError(f"POST /api/encode answered {response.status_code}: {response.text[:300]}")
            code: str = response.json()["code"]
            url_bytes = len(play_path(code, "lazy", HIGH_STEP))
            print(f"share code: {len(code)} characters; player URL {url_bytes} bytes")

            # The cold visit goes first: any other measurement would warm the run it needs cold.
            measure_cold(client, code, COLD_STEP)
            if not args.cold_only:
                measure_warm_ratio(client, code, "lazy", args.samples)
                measure_concurrent(server.url, code, "lazy", args.clients, args.duration, args.steps)
                measure_sizes(client, code, args.steps)
        print(f"\nserver memory after: {server.memory()}")
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=STEPS, help=f"scenario steps (default {STEPS})")
    parser.add_argument("--samples", type=int, default=41, help="samples per end in (a) (default 41)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in (c) (default 8)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of (c) (default 20)")
    parser.add_argument(
        "--skip-engine-reference", action="store_true", help="do not time the engine alone first"
    )
    parser.add_argument(
        "--cold-only", action="store_true", help=f"measure only (b), the first visit of step {COLD_STEP}"
    )
    args = parser.parse_args(argv)
    if not HIGH_STEP < args.steps <= 100_000:
        parser.error(f"--steps must be above {HIGH_STEP} and at most 100000")
    if not 1 <= args.samples <= 1000:
        parser.error("--samples must be 1 to 1000")
    if not 1 <= args.clients <= 64:
        parser.error("--clients must be 1 to 64")
    if not 0 < args.duration <= 300:
        parser.error("--duration must be above 0 and at most 300 seconds")
    try:
        run(args)
    except Exception as error:  # a measurement that breaks is still a report, never a failed exit
        print(f"\nweb latency: could not finish: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
