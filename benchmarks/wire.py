"""How many bytes a step costs on the wire, plain and gzip-compressed.

A person stepping through a lesson with the arrow keys asks for one htmx swap per step (the player's
blocks for the next step). On a workshop room's shared Wi-Fi it is the bytes, more than the server's
time, that make a step feel slow. This script starts the app as `sptelab serve` runs it (one granian
worker, on a free loopback port: benchmarks/web_latency.py's `Server`), then, for the built-in lessons
`worked-example` and `write-storm-2m` under every preset, asks for every step swap (step 1 to the last,
each as the next step after the one before) twice: once taking no compression (`Accept-Encoding:
identity`) and once taking gzip, and counts the bytes of each body as sent. It prints, per lesson and
preset, the median and largest swap, plain and compressed, and their ratio; then the first visit (the
whole player page and the static files it loads).

It is a measurement, not a test: it always exits 0. Requests go to 127.0.0.1 only.

    python3 benchmarks/wire.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
# Run from a checkout without installing: the engine lives beside this directory.
sys.path.insert(0, str(REPO))

# The latency benchmark's helpers: its directory is on sys.path when this file runs as a script.
from web_latency import HX, PRESETS, REQUEST_TIMEOUT_S, Server, play_path  # noqa: E402

from app.render import HTMX, static_url  # noqa: E402
from scenarios import load_builtin_text  # noqa: E402

LESSONS = ("worked-example", "write-storm-2m")
PLAIN = {"Accept-Encoding": "identity"}
GZIP = {"Accept-Encoding": "gzip"}


@dataclass(frozen=True)
class Sent:
    """One answer's body as it went over the wire, and whether it went compressed."""

    size: int
    gzip: bool


def fetch(client: httpx.Client, path: str, headers: dict[str, str]) -> Sent:
    with client.stream("GET", path, headers=headers) as response:
        body = b"".join(response.iter_raw())
        if response.status_code != 200:
            raise RuntimeError(f"GET {path[:80]} answered {response.status_code}")
        return Sent(len(body), response.headers.get("content-encoding") == "gzip")


def kb(size: float) -> str:
    return f"{size / 1024:.1f}"


def steps_of(lesson: str) -> int:
    steps: list[object] = json.loads(load_builtin_text(lesson))["steps"]
    return len(steps)


def measure_swaps(client: httpx.Client) -> None:
    print("step swaps (htmx partial of the player, the next step), KB per swap as sent")
    print(f"    {'lesson':<16}{'preset':<12}{'swaps':>6}{'plain p50':>11}{'plain max':>11}"
          f"{'gzip p50':>10}{'gzip max':>10}{'ratio':>8}")  # fmt: skip
    for lesson in LESSONS:
        last = steps_of(lesson)
        for variant in PRESETS:
            plain: list[int] = []
            zipped: list[int] = []
            for step in range(1, last + 1):
                path = play_path(None, variant, step, scenario=lesson)
                plain.append(fetch(client, path, {**HX, **PLAIN}).size)
                sent = fetch(client, path, {**HX, **GZIP})
                if not sent.gzip:
                    print(f"    note: {lesson} step {step} ({variant}) went uncompressed ({sent.size} B)")
                zipped.append(sent.size)
            ratio = sum(plain) / sum(zipped)
            print(f"    {lesson:<16}{variant:<12}{len(plain):>6}"
                  f"{kb(statistics.median(plain)):>11}{kb(max(plain)):>11}"
                  f"{kb(statistics.median(zipped)):>10}{kb(max(zipped)):>10}{ratio:>7.1f}x")  # fmt: skip


def measure_first_visit(client: httpx.Client) -> None:
    print("\nfirst visit of the player (worked-example, lazy, step 0), KB as sent")
    print(f"    {'what':<40}{'plain':>10}{'gzip':>10}")
    paths = [
        ("player page", play_path(None, "lazy", 0, scenario="worked-example")),
        ("app.css", static_url("app.css")),
        ("keys.js", static_url("keys.js")),
        ("htmx", static_url(HTMX)),
    ]
    total_plain = total_zipped = 0
    for label, path in paths:
        plain, zipped = fetch(client, path, PLAIN), fetch(client, path, GZIP)
        total_plain += plain.size
        total_zipped += zipped.size
        print(f"    {label:<40}{kb(plain.size):>10}{kb(zipped.size):>10}")
    print(f"    {'in all':<40}{kb(total_plain):>10}{kb(total_zipped):>10}")


def run() -> None:
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    server = Server(artifacts / "wire-server.log")
    server.start()
    try:
        print(f"server: {server.url}, log {server.log_path}\n")
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            measure_swaps(client)
            measure_first_visit(client)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.parse_args(argv)
    try:
        run()
    except Exception as error:  # a measurement that breaks is still a report, never a failed exit
        print(f"\nwire: could not finish: {error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
