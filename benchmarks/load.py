"""A workshop's load on the web app: 50 attendees clicking through the built-in scenarios for a minute.

At a workshop 30 to 60 people open the app at once, from the links on the slides and from links others
paste in the chat, and click: a step, a pause to read, another step. This script starts the server as the
Docker image does by default (`sptelab serve` with the image's SPTELAB_* settings, one worker, default
caches; only the address is loopback), then runs that many simulated attendees in one event loop for a
bounded time, on 127.0.0.1 only. Each attendee is one browser with its own connection and its own seeded
random think time (0.5-2 s between clicks, a person reading), and follows one of four habits:

  step     opens a built-in scenario (/play?scenario=NAME) and steps with the keyboard: htmx partial
           requests, now and then back a step, a jump with the slider, presentation mode or an SVG export;
  share    the same through a pasted share link (/play?s=CODE), the whole scenario in the URL;
  compare  the presets side by side (/compare), stepping;
  predict  predict mode (mode=predict&score=0-0): answers each question, continues past notes, and starts
           again at the end.

Each attendee starts on a different scenario (there are 11) and preset, and moves on to the next scenario at
the end of one, so the run cache (16 runs by default) sees the whole library under every preset: evictions
and rebuilds are part of the load.

Reported: every non-200 answer and every failed request (there must be none), latency percentiles overall
and per kind of request, throughput, and the server's memory (VmRSS sampled every second, VmHWM, summed
over the worker processes) before, during and after, against a bound of the caches' byte budget plus a
fixed overhead per worker. Also the client's own event-loop lag, which says whether the numbers measure the
server or this script. Each target is printed with PASS or MISS; it is a benchmark, not a test: it always
exits 0.

    python3 benchmarks/load.py                                # 50 attendees, 60 s, one worker
    python3 benchmarks/load.py --attendees 10 --duration 10   # a quick run
    python3 benchmarks/load.py --workers 2
    python3 benchmarks/load.py --cache-bytes 67108864         # a small cache: does the LRU bound RSS?
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import httpx

REPO = Path(__file__).resolve().parent.parent
# Run from a checkout without installing: the engine lives beside this directory.
sys.path.insert(0, str(REPO))

# The latency benchmark's helpers: its directory is on sys.path when this file runs as a script.
from web_latency import _free_port, memory_kb, ms, percentile, stop_process, verdict  # noqa: E402

from engine.codec import encode_scenario  # noqa: E402
from scenarios import builtin_names, load_builtin_text  # noqa: E402

PRESETS = ("zap", "lazy-buggy", "lazy", "modern")
SEED = 20140417

ATTENDEES = 50
DURATION_S = 60.0
THINK_S = (0.5, 2.0)
# Habits of 20 attendees in a row, interleaved so that a short run has all four: half step a built-in
# scenario, the rest split over the other three.
HABITS = ("step", "share", "step", "compare", "step", "predict") * 3 + ("step", "share")

# The targets. People click every 0.5-2 s and read what changed: an answer within ~100 ms feels
# instant, and up to ~300 ms still feels like the page following the key, not waiting for it. So 95 of
# 100 clicks must be answered within 300 ms (first visits that build a run included), and 99 within 1 s,
# the limit of an uninterrupted flow of thought (Nielsen's response-time limits).
TARGET_P95_MS = 300.0
TARGET_P99_MS = 1000.0
# Memory: the caches' byte budget (SPTELAB_CACHE_BYTES, 512 MiB in the image) bounds the stored states;
# the interpreter, the libraries, the rendered pages and views and the request buffers come on top.
OVERHEAD_MB = 256

STARTUP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
SAMPLE_EVERY_S = 1.0

# The settings the Docker image sets (Dockerfile, ENV), but the address: loopback only.
IMAGE_SETTINGS = {
    "SPTELAB_HOST": "127.0.0.1",
    "SPTELAB_WORKERS": "1",
    "SPTELAB_WORKSHOP": "0",
    "SPTELAB_ROOT_PATH": "",
    "SPTELAB_PROXY_HEADERS": "1",
    "SPTELAB_FORWARDED_ALLOW_IPS": "127.0.0.1",
    "SPTELAB_ACCESS_LOG": "0",
    "SPTELAB_CACHE_BYTES": str(512 << 20),
}


# ---------------------------------------------------------------------------------------------------------
# The server and its memory


def _descendants(root: int) -> list[int]:
    """`root` and every process below it (uvicorn's workers, multiprocessing's helpers), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                # The command name is in parentheses and may hold spaces: the parent pid follows the last ')'.
                parents[int(entry)] = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree = [root]
    for pid in tree:
        tree.extend(child for child, parent in parents.items() if parent == pid)
    return tree


@dataclass
class Memory:
    """The server's memory at one moment: summed VmRSS and VmHWM over its processes, in MiB."""

    rss_mb: float
    hwm_mb: float
    processes: int
    per_process: list[tuple[int, float, float]]  # (pid, rss MiB, hwm MiB)


def cpu_seconds(root: int) -> float:
    """User and system CPU time of `root` and the processes below it, from /proc/PID/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in _descendants(root):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as loadavg:
            return " ".join(loadavg.read().split()[:3])
    except OSError:
        return "?"


def memory(root: int) -> Memory:
    rows = []
    for pid in _descendants(root):
        status = memory_kb(pid)
        if "VmRSS" in status:
            rows.append((pid, status["VmRSS"] / 1024, status.get("VmHWM", 0) / 1024))
    return Memory(sum(r[1] for r in rows), sum(r[2] for r in rows), len(rows), rows)


@dataclass
class Server:
    log_path: Path
    workers: int
    settings: dict[str, str]
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        # The image's command, `sptelab serve`, with its settings; the port and address on loopback.
        command = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, **IMAGE_SETTINGS, **self.settings, "PYTHONUNBUFFERED": "1"}
        env["SPTELAB_WORKERS"] = str(self.workers)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                answered = httpx.get(f"{self.url}/healthz", timeout=1.0, trust_env=False).status_code == 200
            except httpx.HTTPError:
                answered = False
            # With several workers, wait for all of them: the first answers before the others are up.
            if answered and (self.workers == 1 or len(_descendants(self.pid)) > self.workers):
                return
            time.sleep(0.2)
        raise RuntimeError(f"server did not answer /healthz in {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.process, timeout=15)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# ---------------------------------------------------------------------------------------------------------
# The attendees


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: int
    code: str  # its share code, as a pasted link carries it


def library() -> list[Scenario]:
    out = []
    for name in builtin_names():
        data = json.loads(load_builtin_text(name))
        out.append(Scenario(name, len(data["steps"]), encode_scenario(data)))
    return out


@dataclass
class Sample:
    kind: str
    seconds: float
    status: int
    size: int
    url: str = ""


@dataclass
class Tally:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished_scenarios: int = 0


HX = {"HX-Request": "true"}
_PREDICT_FORM = re.compile(r'<form id="predict-form"[^>]*\baction="([^"]*)"[^>]*>(.*?)</form>', re.DOTALL)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')
_CHOICE = re.compile(r'data-choice="([^"]*)"')
_CONTINUE = re.compile(r'data-action="predict-continue" href="([^"]*)"')
_AGAIN = re.compile(r'data-action="predict-again" href="([^"]*)"')


class Attendee:
    """One person with one browser: a connection of its own, a habit, a seeded pace."""

    def __init__(
        self, number: int, client: httpx.AsyncClient, scenarios: list[Scenario], tally: Tally
    ) -> None:
        self.number = number
        self.client = client
        self.scenarios = scenarios
        self.tally = tally
        self.rng = random.Random(SEED + number)
        self.habit = HABITS[number % len(HABITS)]
        self.which = number % len(scenarios)
        self.variant = PRESETS[(number // len(scenarios) + number) % len(PRESETS)]
        self.step = 0
        self.present = False

    @property
    def scenario(self) -> Scenario:
        return self.scenarios[self.which]

    def _source(self) -> dict[str, str]:
        if self.habit == "share":
            return {"s": self.scenario.code}
        return {"scenario": self.scenario.name}

    def play_url(self, step: int, **extra: str) -> str:
        params = {**self._source(), "variant": self.variant, "step": str(step), **extra}
        if self.present:
            params["present"] = "1"
        return "/play?" + urlencode(params)

    def compare_url(self, step: int) -> str:
        return "/compare?" + urlencode({**self._source(), "step": str(step)})

    async def get(self, kind: str, url: str, headers: dict[str, str] | None = None) -> str:
        """One request, timed to its last byte; the body, or "" after an error (counted)."""
        if self.habit == "share":
            kind = f"share {kind}"
        start = time.perf_counter()
        try:
            response = await self.client.get(url, headers=headers)
        except httpx.HTTPError as error:
            self.tally.errors.append(f"attendee {self.number} {kind} {url[:80]}: {error!r}")
            return ""
        elapsed = time.perf_counter() - start
        self.tally.samples.append(Sample(kind, elapsed, response.status_code, len(response.content), url))
        if response.status_code != 200:
            self.tally.errors.append(f"attendee {self.number} {kind} {url[:80]}: HTTP {response.status_code}")
            return ""
        return response.text

    async def think(self) -> None:
        await asyncio.sleep(self.rng.uniform(*THINK_S))

    def next_scenario(self) -> None:
        self.tally.finished_scenarios += 1
        self.which = (self.which + 1) % len(self.scenarios)
        self.variant = PRESETS[(PRESETS.index(self.variant) + 1) % len(PRESETS)]
        self.step = 0

    async def run(self, deadline: float) -> None:
        # Arrive within the first seconds, not all in the same millisecond.
        await asyncio.sleep(self.rng.uniform(0, 3.0))
        loop = {
            "step": self.stepping,
            "share": self.stepping,
            "compare": self.comparing,
            "predict": self.predicting,
        }
        await loop[self.habit](deadline)

    async def stepping(self, deadline: float) -> None:
        await self.get("page", self.play_url(0))
        while time.monotonic() < deadline:
            await self.think()
            if time.monotonic() >= deadline:
                return
            total = self.scenario.steps
            roll = self.rng.random()
            if roll < 0.04:  # the slider: a jump, sent as the slider sends it
                self.step = self.rng.randrange(total + 1)
                await self.get("partial", self.play_url(self.step), {**HX, "HX-Trigger": "step-slider"})
            elif roll < 0.07:  # presentation mode on or off: a whole page
                self.present = not self.present
                await self.get("page", self.play_url(self.step))
            elif roll < 0.09:  # export this step as a picture
                params = {**self._source(), "variant": self.variant, "step": str(self.step)}
                await self.get("svg", "/export.svg?" + urlencode(params))
            elif roll < 0.17 and self.step > 0:  # back a step
                self.step -= 1
                await self.get("partial", self.play_url(self.step), HX)
            elif self.step < total:  # the usual: the next step
                self.step += 1
                await self.get("partial", self.play_url(self.step), HX)
            else:  # the end: the next scenario, from its link
                self.next_scenario()
                self.present = False
                await self.get("page", self.play_url(0))

    async def comparing(self, deadline: float) -> None:
        await self.get("compare", self.compare_url(0))
        while time.monotonic() < deadline:
            await self.think()
            if time.monotonic() >= deadline:
                return
            if self.step < self.scenario.steps:
                self.step += 1
                await self.get("compare-partial", self.compare_url(self.step), HX)
            else:
                self.next_scenario()
                await self.get("compare", self.compare_url(0))

    async def predicting(self, deadline: float) -> None:
        body = await self.get("predict", self.play_url(0, mode="predict", score="0-0"))
        while time.monotonic() < deadline:
            await self.think()
            if time.monotonic() >= deadline:
                return
            url = self._predict_click(body)
            if url is None:  # lost the thread (an error page): start the next scenario afresh
                self.next_scenario()
                body = await self.get("predict", self.play_url(0, mode="predict", score="0-0"))
                continue
            body = await self.get("predict", url, HX)

    def _predict_click(self, body: str) -> str | None:
        """What the person clicks in the question panel: a choice, "continue", or "play again"."""
        form = _PREDICT_FORM.search(body)
        if form is not None:
            action, inner = form.groups()
            fields = [(html.unescape(k), html.unescape(v)) for k, v in _HIDDEN.findall(inner)]
            choices = _CHOICE.findall(inner)
            if choices:
                fields.append(("answer", html.unescape(self.rng.choice(choices))))
                return html.unescape(action) + "?" + urlencode(fields)
        for link in (_CONTINUE, _AGAIN):
            found = link.search(body)
            if found is not None:
                if link is _AGAIN:
                    self.tally.finished_scenarios += 1
                return html.unescape(found.group(1))
        return None


async def _sample_memory(pid: int, deadline: float, samples: list[tuple[float, Memory]]) -> None:
    start = time.monotonic()
    while time.monotonic() < deadline:
        samples.append((time.monotonic() - start, memory(pid)))
        await asyncio.sleep(SAMPLE_EVERY_S)


async def _watch_lag(deadline: float, lags: list[float]) -> None:
    """How late this event loop wakes up: if the client itself is starved, its latencies are not the
    server's."""
    while time.monotonic() < deadline:
        before = time.perf_counter()
        await asyncio.sleep(0.05)
        lags.append(time.perf_counter() - before - 0.05)


def attendee_address(number: int) -> str:
    """Attendee `number`'s own loopback address (127.0.0.10, .11, ...): people in a room come from
    machines of their own, and the server admits work per client address (app/room.py)."""
    return f"127.0.0.{10 + number}"


def client_from(
    url: str, address: str, connections: int = 1, timeout: float = REQUEST_TIMEOUT_S
) -> httpx.AsyncClient:
    """A client of the server at `url` whose connections come from `address`."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=url, transport=transport, limits=limits, timeout=httpx.Timeout(timeout), trust_env=False
    )


@dataclass
class Outcome:
    tally: Tally
    wall: float
    memory: list[tuple[float, Memory]]
    lags: list[float]


async def _attend(args: argparse.Namespace, server: Server, scenarios: list[Scenario]) -> Outcome:
    tally = Tally()
    memory_samples: list[tuple[float, Memory]] = []
    lags: list[float] = []
    clients = [client_from(server.url, attendee_address(n)) for n in range(args.attendees)]
    start = time.monotonic()
    deadline = start + args.duration
    try:
        people = [Attendee(n, clients[n], scenarios, tally) for n in range(args.attendees)]
        work = asyncio.gather(
            *(person.run(deadline) for person in people),
            _sample_memory(server.pid, deadline, memory_samples),
            _watch_lag(deadline, lags),
        )
        try:
            # Bounded: a request in flight at the deadline gets its own timeout, no more.
            await asyncio.wait_for(work, args.duration + REQUEST_TIMEOUT_S + 5)
        except TimeoutError:
            tally.errors.append("the run did not end within its bound: requests were still waiting")
    finally:
        for client in clients:
            await client.aclose()
    return Outcome(tally, time.monotonic() - start, memory_samples, lags)


# ---------------------------------------------------------------------------------------------------------
# The report


def report_latency(outcome: Outcome) -> tuple[bool, bool, bool]:
    tally = outcome.tally
    samples = tally.samples
    times = [s.seconds for s in samples]
    non_200 = sum(1 for s in samples if s.status != 200)
    failed = len(tally.errors) - non_200
    rate = len(samples) / outcome.wall
    print(f"\nrequests: {len(samples)} answered in {outcome.wall:.1f} s ({rate:.1f}/s), {non_200} not 200,"
          f" {max(failed, 0)} failed without an answer; {tally.finished_scenarios} scenarios walked to the"
          " end")  # fmt: skip
    for error in tally.errors[:8]:
        print(f"    error: {error}")
    no_errors = not tally.errors
    print(f"    errors: {len(tally.errors)}   target 0: {verdict(no_errors)}")
    if not times:
        print("    no request completed: MISS")
        return no_errors, False, False
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_kind[sample.kind].append(sample)
    print(f"\n    {'kind':<16}{'count':>7}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}{'KB avg':>9}")
    for kind in sorted(by_kind, key=lambda k: -len(by_kind[k])):
        rows = by_kind[kind]
        values = [s.seconds for s in rows]
        size = sum(s.size for s in rows) / len(rows) / 1024
        cells = "".join(
            f"{ms(v):>10}" for v in (*(percentile(values, f) for f in (0.5, 0.95, 0.99)), max(values))
        )
        print(f"    {kind:<16}{len(rows):>7}{cells}{size:>9.1f}")
    p50, p95, p99 = (percentile(times, f) for f in (0.5, 0.95, 0.99))
    print(f"    {'all':<16}{len(times):>7}{ms(p50):>10}{ms(p95):>10}{ms(p99):>10}{ms(max(times)):>10}")
    ok95 = p95 * 1000 <= TARGET_P95_MS
    ok99 = p99 * 1000 <= TARGET_P99_MS
    print(f"    p95 {ms(p95)}   target <= {TARGET_P95_MS:g} ms: {verdict(ok95)}")
    print(f"    p99 {ms(p99)}   target <= {TARGET_P99_MS:g} ms: {verdict(ok99)}")
    if outcome.lags:
        lag99, lag_max = ms(percentile(outcome.lags, 0.99)), ms(max(outcome.lags))
        print(f"    (this client's event loop woke up late by p99 {lag99}, max {lag_max}: the share of the"
              " latencies that is the client's own)")  # fmt: skip
    return no_errors, ok95, ok99


def report_memory(before: Memory, outcome: Outcome, after: Memory, workers: int, cache_bytes: int) -> bool:
    samples = outcome.memory
    peak_rss = max([before.rss_mb, after.rss_mb, *(m.rss_mb for _, m in samples)])
    print(f"\nserver memory ({after.processes} processes, summed):")
    print(f"    before {before.rss_mb:.0f} MB RSS; after {after.rss_mb:.0f} MB RSS, peak RSS sampled"
          f" {peak_rss:.0f} MB, VmHWM {after.hwm_mb:.0f} MB")  # fmt: skip
    if samples:
        marks = [samples[min(len(samples) - 1, int(len(samples) * f))] for f in (0.25, 0.5, 0.75)]
        marks.append(samples[-1])
        print("    during the run: " + ", ".join(f"{t:.0f} s {m.rss_mb:.0f} MB" for t, m in marks))
        half = samples[len(samples) // 2][1].rss_mb
        print(f"    second half of the run: {samples[-1][1].rss_mb - half:+.0f} MB")
    for pid, rss, hwm in after.per_process:
        print(f"    pid {pid}: {rss:.0f} MB RSS, {hwm:.0f} MB VmHWM")
    bound = before.rss_mb + workers * (cache_bytes / (1 << 20) + OVERHEAD_MB)
    ok = after.hwm_mb <= bound and peak_rss <= bound
    print(
        f"    VmHWM {after.hwm_mb:.0f} MB   target <= startup {before.rss_mb:.0f} MB + {workers} x"
        f" (cache {cache_bytes / (1 << 20):.0f} MB + {OVERHEAD_MB} MB) = {bound:.0f} MB: {verdict(ok)}"
    )
    return ok


def run(args: argparse.Namespace) -> None:
    scenarios = library()
    settings: dict[str, str] = {}
    if args.cache_bytes is not None:
        settings["SPTELAB_CACHE_BYTES"] = str(args.cache_bytes)
    if args.cache_runs is not None:
        settings["SPTELAB_CACHE_RUNS"] = str(args.cache_runs)
    cache_bytes = args.cache_bytes or int(IMAGE_SETTINGS["SPTELAB_CACHE_BYTES"])
    habits = {habit: sum(1 for n in range(args.attendees) if HABITS[n % len(HABITS)] == habit) for habit in
              dict.fromkeys(HABITS)}  # fmt: skip
    print(f"load: {args.attendees} attendees for {args.duration:g} s, think time {THINK_S[0]:g}-"
          f"{THINK_S[1]:g} s, {len(scenarios)} built-in scenarios x {len(PRESETS)} presets; habits "
          + ", ".join(f"{n} {habit}" for habit, n in habits.items()))  # fmt: skip
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    server = Server(artifacts / "load-server.log", args.workers, settings)
    server.start()
    try:
        changed = "".join(f", {name}={value}" for name, value in sorted(settings.items()))
        print(f"server: `sptelab serve` as the image runs it, {args.workers} worker(s), pid {server.pid},"
              f" {server.url}{changed}; cache budget {cache_bytes / (1 << 20):.0f} MB per worker;"
              f" log {server.log_path}")  # fmt: skip
        time.sleep(1.0)
        before = memory(server.pid)
        print(f"server memory before: {before.rss_mb:.0f} MB RSS over {before.processes} processes")
        print(f"machine: {os.cpu_count()} CPUs, load average before {load_average()}")
        server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
        outcome = asyncio.run(_attend(args, server, scenarios))
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
        time.sleep(1.0)
        after = memory(server.pid)
        results = report_latency(outcome)
        answered = max(1, len(outcome.tally.samples))
        # The server's own work per request does not depend on what else runs on the machine; the
        # latencies do. Both are printed, so a run on a busy machine can be read.
        print(f"    server CPU {server_cpu:.1f} s = {server_cpu / answered * 1000:.1f} ms per request,"
              f" {server_cpu / outcome.wall:.0%} of one CPU; this client {client_cpu:.1f} s"
              f" ({client_cpu / outcome.wall:.0%}); load average after {load_average()}")  # fmt: skip
        mem_ok = report_memory(before, outcome, after, args.workers, cache_bytes)
        print("\nsummary: " + ", ".join(
            f"{name} {verdict(ok)}" for name, ok in
            zip(("zero errors", "p95", "p99", "memory bounded"), (*results, mem_ok), strict=True)
        ))  # fmt: skip
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--attendees", type=int, default=ATTENDEES, help=f"default {ATTENDEES}")
    parser.add_argument(
        "--duration", type=float, default=DURATION_S, help=f"seconds (default {DURATION_S:g})"
    )
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument(
        "--cache-bytes", type=int, help="SPTELAB_CACHE_BYTES for the server (default: its own)"
    )
    parser.add_argument("--cache-runs", type=int, help="SPTELAB_CACHE_RUNS for the server (default: its own)")
    args = parser.parse_args(argv)
    if not 1 <= args.attendees <= 500:
        parser.error("--attendees must be 1 to 500")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be above 0 and at most 600 seconds")
    if not 1 <= args.workers <= 16:
        parser.error("--workers must be 1 to 16")
    try:
        run(args)
    except Exception as error:  # a measurement that breaks is still a report, never a failed exit
        print(f"\nload: could not finish: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
