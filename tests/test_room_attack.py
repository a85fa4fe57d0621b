"""One hostile laptop in the room, as a test: benchmarks/room.py's attack, shortened, against a real
server started as the Docker image starts it, on loopback only.

Attendees step through the lessons from addresses of their own while an attacker sends waves of heavy
share links (each a whole run of a gigabyte's dirty logging toggled under `modern`, some seconds of
CPU) and drops each after two seconds. The targets are the room's: attendee p99 within a second, no
error an attendee can see, `/healthz` always within a second; and a dropped link stops its work, so
the server's CPU per dropped link stays near the two seconds it was given, far below what its whole
run costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import room  # noqa: E402  (benchmarks/ is scripts, not a package)
from load import Server  # noqa: E402

from engine.policy import make_policy  # noqa: E402
from engine.scenario import parse_scenario  # noqa: E402
from engine.simulation import Simulation  # noqa: E402


def test_a_heavy_link_is_heavy_enough_that_dropping_it_matters() -> None:
    # The oracle must be able to tell: run whole, one attack link keeps a CPU busy for far longer than
    # the two seconds after which the attacker drops it. Counted in engine steps, not seconds: its
    # toggles each split and recover a gigabyte, 262 144 sptes written each way.
    sim = Simulation(parse_scenario(room.heavy_scenario(0)), make_policy("modern", {}), detail="summary")
    sim.step()  # the gigabyte mapped
    sim.step()  # logging on: split
    assert sim.kvm.stat.as_json("6.x")["pages_4k"] >= 262_144 - 512


def test_the_room_keeps_its_targets_under_attack(tmp_path: Path) -> None:
    args = argparse.Namespace(attendees=10, duration=48.0, warmup=12.0, wave=4, every=12.0, drop_after=2.0)
    server = Server(tmp_path / "server.log", workers=1, settings={})
    server.start()
    try:
        # On a loop of its own, in a thread of its own: the browser tests keep a loop in the main thread.
        with ThreadPoolExecutor(max_workers=1) as pool:
            report = pool.submit(asyncio.run, room.room(server, args)).result()
    finally:
        server.stop()
    room.print_report(report)
    verdicts = room.judge(report)
    assert verdicts == dict.fromkeys(verdicts, True), verdicts
    assert report.attack.sent >= 8 and report.attack.dropped == report.attack.sent
    assert report.cpu_per_dropped <= args.drop_after + 1.0
