"""Memory under hostile traffic: does the server's RSS stay near SPTELAB_CACHE_BYTES?

Starts the server as the Docker image does (`python -m app`, one worker, the image's SPTELAB_* settings and
MALLOC_ARENA_MAX; only the address is loopback) and sends it, from a few client threads, a mix meant to
fill every cache at once:

  text      a distinct share code per request, each with a title, description and notes at their caps
            (a unique word in front: the code stays short, the page is as big as the caps allow);
  heavy     one scenario that maps 64 Ki 4K pages through the TLB and then steps through notes, played at
            random steps under every preset (live states of ~40 MB, snapshots, cursors);
  headers   player pages with a 4 MiB header, a unique Host and a unique HX-Trigger (none may add a cache
            entry: the page cache's key is canonical);
  compare   /compare of the text codes and the built-in lessons, at random steps;
  exports   /export.svg, /result.json and /download of the same.

RSS (VmRSS of the server and every process under it) is sampled every half second. Printed: the peak, the
settled RSS (after the traffic stops, once the server's minute-long sweep has trimmed the heap), the budget's
own count (/healthz/memory: its total and the most it held), and every status code seen (a 500 is a bug).
A benchmark, not a test: it always exits 0.

    python3 benchmarks/memory.py                     # 5 minutes, SPTELAB_CACHE_BYTES = 512 MiB
    python3 benchmarks/memory.py --minutes 1 --cache-bytes 67108864
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.codec import encode_scenario  # noqa: E402
from engine.scenario import (  # noqa: E402
    MAX_DESCRIPTION_CHARS,
    MAX_NOTE_CHARS,
    MAX_TITLE_CHARS,
    parse_scenario,
)
from scenarios import builtin_names  # noqa: E402

# The latency benchmark's helpers: this directory is on sys.path when this file runs as a script.
sys.path.insert(0, str(REPO / "benchmarks"))
from web_latency import stop_process  # noqa: E402

# The Docker image's settings (Dockerfile ENV), but on loopback.
# The lessons the mix draws from, in a fixed order: a seed gives the same traffic whatever order the
# library shows them in.
LESSONS = sorted(builtin_names())

IMAGE_ENV = {
    "SPTELAB_WORKERS": "1",
    "SPTELAB_WORKSHOP": "0",
    "SPTELAB_PROXY_HEADERS": "1",
    "SPTELAB_ACCESS_LOG": "0",
    "MALLOC_ARENA_MAX": "2",
}
PRESETS = ("zap", "lazy-buggy", "lazy", "modern")
STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
SAMPLE_S = 0.5
# The server sweeps and trims once a minute (app.main.GC_FULL_INTERVAL_S): settled RSS is read after it.
SETTLE_S = 65.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                found.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of a process and every process under it, in bytes."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
        stack.extend(_children(current))
    return total


@dataclass
class Server:
    """`python -m app` on a free loopback port, with the image's settings and the given cache bytes."""

    cache_bytes: int
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            **IMAGE_ENV,
            "SPTELAB_HOST": "127.0.0.1",
            "SPTELAB_PORT": str(self.port),
            "SPTELAB_CACHE_BYTES": str(self.cache_bytes),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app"],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}: {self.log_path.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"no answer in {STARTUP_TIMEOUT_S:.0f} s: {self.log_path.read_text()}")

    def stop(self) -> None:
        stop_process(self.process, timeout=15)

    def memory(self) -> dict[str, int]:
        answer: dict[str, int] = httpx.get(f"{self.url}/healthz/memory", timeout=10, trust_env=False).json()
        return answer


# ---------------------------------------------------------------------------------------------------------
# The scenarios


def _base(steps: list[dict[str, Any]], npages: int = 512, **fields: Any) -> dict[str, Any]:
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": [{"id": 1, "base_gfn": 0, "npages": npages, "host_page": "2M"}],
        "steps": steps,
        **fields,
    }


def text_code(unique: int) -> str:
    """A share code whose title, description and notes are at their caps, unique by a word in front."""
    word = f"w{unique:x} "
    steps: list[dict[str, Any]] = []
    for k in range(8):
        steps.append({"op": "note", "text": (word + f"note {k} " + "lorem ipsum " * 400)[:MAX_NOTE_CHARS]})
        steps.append({"op": "write", "gfn": hex(k * 64), "count": 64})
    steps.insert(8, {"op": "enable_dirty_log", "slot": 1})
    steps.append({"op": "get_dirty_log", "slot": 1})
    data = _base(
        steps,
        title=(word + "title " * 100)[:MAX_TITLE_CHARS],
        description=(word + "*sptes* and [links](https://example.org) " * 400)[:MAX_DESCRIPTION_CHARS],
    )
    return encode_scenario(parse_scenario(json.dumps(data)))


def heavy_code() -> str:
    """64 Ki 4K pages written through the TLB, logging toggled, then 200 notes to step through."""
    steps: list[dict[str, Any]] = [
        {"op": "write", "gfn": "0x0", "count": 65536, "stride": 1},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x0", "count": 4096, "stride": 16},
        {"op": "get_dirty_log", "slot": 1},
    ]
    steps += [{"op": "note", "text": f"note {k}"} for k in range(200)]
    data = _base(steps, npages=1 << 18)
    data["memslots"][0]["host_page"] = "4K"
    return encode_scenario(parse_scenario(json.dumps(data)))


# ---------------------------------------------------------------------------------------------------------
# The mix


@dataclass
class Mix:
    url: str
    heavy: str
    seed: int
    statuses: Counter[str] = field(default_factory=Counter)
    codes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    unique: int = 0

    def _next(self) -> int:
        with self.lock:
            self.unique += 1
            return self.unique

    def _source(self, rng: random.Random) -> str:
        with self.lock:
            codes = list(self.codes[-64:])
        if codes and rng.random() < 0.5:
            return f"s={rng.choice(codes)}"
        return f"scenario={rng.choice(LESSONS)}"

    def text(self, client: httpx.Client, rng: random.Random) -> None:
        code = text_code(self._next() * 7919 + self.seed)
        with self.lock:
            self.codes.append(code)
        self._get(client, "text", f"/play?s={code}&variant={rng.choice(PRESETS)}&step={rng.randint(0, 17)}")

    def heavy_run(self, client: httpx.Client, rng: random.Random) -> None:
        step = rng.choice([1, 2, 3, 4, rng.randint(5, 204)])
        self._get(client, "heavy", f"/play?s={self.heavy}&variant={rng.choice(PRESETS)}&step={step}")

    def headers(self, client: httpx.Client, rng: random.Random) -> None:
        unique = self._next()
        headers = {
            "Host": f"h{unique}-{rng.getrandbits(64):x}.example",
            "HX-Request": "true",
            "HX-Trigger": f"t{unique}-" + "x" * 64,
            "X-Pad": "p" * (4 << 20),
        }
        self._get(client, "headers", f"/play?scenario={rng.choice(LESSONS)}&step=1", headers)

    def compare(self, client: httpx.Client, rng: random.Random) -> None:
        self._get(client, "compare", f"/compare?{self._source(rng)}&step={rng.randint(0, 12)}")

    def exports(self, client: httpx.Client, rng: random.Random) -> None:
        source = self._source(rng)
        path = rng.choice(
            [
                f"/export.svg?{source}&step={rng.randint(0, 12)}",
                f"/result.json?{source}",
                f"/download?{source}",
            ]
        )
        self._get(client, "exports", path)

    def _get(self, client: httpx.Client, kind: str, path: str, headers: dict[str, str] | None = None) -> None:
        try:
            status = str(client.get(self.url + path, headers=headers).status_code)
        except httpx.HTTPError as error:
            status = type(error).__name__
        with self.lock:
            self.statuses[f"{kind} {status}"] += 1

    def worker(self, index: int, until: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        kinds: list[Callable[[httpx.Client, random.Random], None]] = [
            self.text,
            self.text,
            self.heavy_run,
            self.heavy_run,
            self.headers,
            self.compare,
            self.exports,
        ]
        with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            while time.monotonic() < until:
                rng.choice(kinds)(client, rng)


@dataclass
class Report:
    peak_rss: int
    settled_rss: int
    budget: dict[str, int]
    statuses: dict[str, int]
    samples: list[tuple[float, int]]


def run(
    cache_bytes: int,
    seconds: float,
    log_path: Path,
    *,
    clients: int = 4,
    seed: int = 1,
    settle_s: float = SETTLE_S,
) -> Report:
    """Start a server, send it the mix for `seconds`, and measure; the server is always stopped."""
    server = Server(cache_bytes, log_path)
    server.start()
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        assert server.process is not None
        while not done.is_set():
            samples.append((time.monotonic() - start, rss_bytes(server.process.pid)))
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        sampler.start()
        mix = Mix(server.url, heavy_code(), seed)
        until = time.monotonic() + seconds
        threads = [threading.Thread(target=mix.worker, args=(k, until), daemon=True) for k in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=seconds + 2 * REQUEST_TIMEOUT_S)
        time.sleep(settle_s)
        done.set()
        sampler.join(timeout=10)
        assert server.process is not None
        settled = rss_bytes(server.process.pid)
        budget = server.memory()
        return Report(max(rss for _, rss in samples), settled, budget, dict(mix.statuses), samples)
    finally:
        done.set()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--cache-bytes", type=int, default=512 << 20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--log", type=Path, default=Path("/tmp/sptelab-memory-server.log"))
    args = parser.parse_args()
    mib = 1 << 20
    print(
        f"SPTELAB_CACHE_BYTES = {args.cache_bytes / mib:.0f} MiB, {args.minutes:g} min,"
        f" {args.clients} clients"
    )
    report = run(args.cache_bytes, args.minutes * 60, args.log, clients=args.clients)
    step = max(1, len(report.samples) // 20)
    for at, rss in report.samples[::step]:
        print(f"  {at:6.1f} s  RSS {rss / mib:7.1f} MiB")
    print(f"peak RSS     {report.peak_rss / mib:7.1f} MiB")
    print(f"settled RSS  {report.settled_rss / mib:7.1f} MiB (after {SETTLE_S:.0f} s idle)")
    budget = report.budget
    print(
        f"budget       total {budget['total'] / mib:.1f} MiB, peak {budget['peak'] / mib:.1f} MiB of"
        f" {budget['limit'] / mib:.0f} MiB, {budget['evictions']} evictions"
    )
    for key, count in sorted(report.statuses.items()):
        print(f"  {key:24} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
