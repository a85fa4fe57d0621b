"""The room's scheduler (app/room.py): builds take turns fairly, a client's burst waits behind its own
work, a client that goes away cancels its build, and a build waiting for a lock gives up its turn.

Turns are driven by a fake clock, so the order of events is what is asserted, never a duration.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from app.errors import AppError
from app.main import create_app
from app.room import Cancelled, Room, Ticket, Turns, checkpoint, waiting_for
from app.settings import Settings

R = TypeVar("R")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_async(coroutine: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine on a loop of its own, in a thread of its own: the browser tests' Playwright keeps
    an event loop running in the main thread for the whole session."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(2000):
        if condition():
            return
        threading.Event().wait(0.005)
    raise AssertionError("the condition never held")


def _waiting(turns: Turns, count: int) -> Callable[[], bool]:
    return lambda: turns.waiting == count


def test_a_build_that_used_its_turn_lets_a_waiting_one_go_first() -> None:
    clock = Clock()
    turns = Turns(0.05, clock)
    long, short = Ticket("a"), Ticket("b")
    order: list[str] = []
    turns.acquire(long)
    turns.checkpoint(long)  # nobody waits, the turn is not used up: it keeps going
    def run_short() -> None:
        with turns.holding(short):
            order.append("short ran")

    thread = in_thread(run_short)
    wait_until(lambda: turns.waiting == 1)
    turns.checkpoint(long)  # the turn is not used up yet: the waiting build keeps waiting
    assert order == []
    clock.now = 0.06
    turns.checkpoint(long)  # used up with one waiting: it goes first, then the long build goes on
    order.append("long resumed")
    thread.join(1)
    assert order == ["short ran", "long resumed"]
    turns.release(long)


def test_builds_run_in_arrival_order() -> None:
    turns = Turns(1.0, Clock())
    first = Ticket("a")
    turns.acquire(first)
    order: list[str] = []
    threads: list[threading.Thread] = []

    def take_turn(ticket: Ticket) -> Callable[[], None]:
        def run() -> None:
            with turns.holding(ticket):
                order.append(ticket.client)

        return run

    for count, name in enumerate(("b", "c", "d"), start=1):
        threads.append(in_thread(take_turn(Ticket(name))))
        wait_until(_waiting(turns, count))
    turns.release(first)
    for thread in threads:
        thread.join(1)
    assert order == ["b", "c", "d"]


def test_the_client_that_used_less_goes_next_and_keeps_its_turn_against_a_heavier_one() -> None:
    clock = Clock()
    turns = Turns(0.05, clock)
    heavy, light = Ticket("heavy"), Ticket("light")
    order: list[str] = []
    turns.acquire(heavy)
    clock.now = 1.0  # the heavy client has had the interpreter for a second

    def run_light() -> None:
        with turns.holding(light):
            order.append("light started")
            clock.now += 0.5  # half a second of work, turn after turn ...
            turns.checkpoint(light)  # ... yet less than the heavy client used: it keeps going
            order.append("light went on")

    thread = in_thread(run_light)
    wait_until(lambda: turns.waiting == 1)
    turns.checkpoint(heavy)  # used up, and the waiting client used less: it goes first
    order.append("heavy resumed")
    thread.join(1)
    assert order == ["light started", "light went on", "heavy resumed"]
    assert turns.used("heavy") == pytest.approx(1.0, rel=0.05)
    assert turns.used("light") == pytest.approx(0.5, rel=0.05)
    turns.release(heavy)
    before = turns.used("heavy")
    clock.now += 2 * turns.half_life  # use is judged by what a client did lately
    assert turns.used("heavy") == pytest.approx(before / 4)


def test_a_client_that_goes_stops_its_build_at_the_next_checkpoint_and_leaves_the_queue() -> None:
    turns = Turns(1.0, Clock())
    running, waiting = Ticket("a"), Ticket("b")
    turns.acquire(running)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            turns.acquire(waiting)
        except Cancelled as error:
            errors.append(error)

    thread = in_thread(wait)
    wait_until(lambda: turns.waiting == 1)
    waiting.gone.set()
    thread.join(1)
    assert len(errors) == 1 and turns.waiting == 0
    running.gone.set()
    with pytest.raises(Cancelled):
        turns.checkpoint(running)


def test_checkpoint_outside_a_build_does_nothing() -> None:
    checkpoint()  # the command line and the tests run the caches without a room


def test_a_build_waiting_for_a_lock_gives_its_turn_to_the_lock_holder() -> None:
    # B holds the run's lock and yields its turn to A; A then needs that lock. Holding its turn while it
    # waited for the lock, A would wait forever for B, which waits for the turn.
    clock = Clock()
    turns = Turns(0.05, clock)
    lock = threading.RLock()
    a, b = Ticket("a"), Ticket("b")
    order: list[str] = []
    b_has_lock = threading.Event()
    a_queued = threading.Event()

    def build_b() -> None:
        with turns.holding(b), waiting_for(lock):
            order.append("b locked")
            b_has_lock.set()
            a_queued.wait(1)
            wait_until(lambda: turns.waiting == 1)
            clock.now += 1
            checkpoint()  # used up: A goes first
            order.append("b resumed")

    def build_a() -> None:
        b_has_lock.wait(1)
        a_queued.set()
        with turns.holding(a):
            order.append("a ran")
            with waiting_for(lock):
                order.append("a locked")

    threads = [in_thread(build_b), in_thread(build_a)]
    for thread in threads:
        thread.join(2)
    assert not any(thread.is_alive() for thread in threads)
    assert order == ["b locked", "a ran", "b resumed", "a locked"]


# --- admission -----------------------------------------------------------------------------------------


class FakeRequest:
    def __init__(self, host: str) -> None:
        self.client = SimpleNamespace(host=host)
        self.gone = False

    async def is_disconnected(self) -> bool:
        return self.gone


def test_a_clients_burst_waits_behind_its_own_work_not_in_front_of_others() -> None:
    async def scenario() -> list[str]:
        room = Room(slots=4, turn=0.01)
        order: list[str] = []
        release = threading.Event()

        def slow(name: str) -> Callable[[], str]:
            def work() -> str:
                order.append(f"{name} start")
                release.wait(2)
                order.append(f"{name} end")
                return name

            return work

        def quick() -> str:
            order.append("other")
            return "other"

        attacker = FakeRequest("10.0.0.66")
        burst = [
            asyncio.create_task(room.run(attacker, slow(f"heavy{i}")))  # type: ignore[arg-type]
            for i in range(3)
        ]
        await asyncio.sleep(0.2)
        # Only the first of the burst is admitted; the others wait in the attacker's own queue, so the
        # other client is admitted at once, and runs as soon as the heavy build lets it have a turn.
        assert order == ["heavy0 start"]
        other = asyncio.create_task(room.run(FakeRequest("10.0.0.7"), quick))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.gather(*burst, other)
        return order

    order = run_async(scenario())
    assert order.index("other") < order.index("heavy1 start")


def test_a_client_that_goes_while_queued_never_runs() -> None:
    async def scenario() -> tuple[list[str], Any]:
        room = Room(slots=1, turn=0.01)
        ran: list[str] = []
        release = threading.Event()
        def hold() -> None:
            release.wait(2)
            ran.append("holder")

        holder = asyncio.create_task(room.run(FakeRequest("10.0.0.1"), hold))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        leaving = FakeRequest("10.0.0.2")
        queued = asyncio.create_task(room.run(leaving, lambda: ran.append("queued")))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        leaving.gone = True
        outcome = await asyncio.gather(queued, return_exceptions=True)
        release.set()
        await holder
        return ran, outcome[0]

    ran, outcome = run_async(scenario())
    assert ran == ["holder"] and isinstance(outcome, Cancelled)


def test_a_client_over_its_share_is_refused_until_its_use_decays() -> None:
    clock = Clock()

    async def scenario() -> list[object]:
        room = Room(slots=4, turn=0.01, share=10.0, clock=clock)
        ticket = Ticket("10.0.0.66")
        room.turns.acquire(ticket)
        clock.now = 30.0  # thirty seconds of heavy links
        room.turns.release(ticket)
        outcomes: list[object] = []
        for host in ("10.0.0.66", "10.0.0.7"):
            try:
                outcomes.append(await room.run(FakeRequest(host), lambda: "built"))  # type: ignore[arg-type]
            except AppError as error:
                outcomes.append((error.status, error.message))
        clock.now += 2 * room.turns.half_life  # its use has decayed to a quarter: 7.5 s
        outcomes.append(await room.run(FakeRequest("10.0.0.66"), lambda: "built"))  # type: ignore[arg-type]
        return outcomes

    refused, other, later = run_async(scenario())
    assert isinstance(refused, tuple) and refused[0] == 429
    assert "30 s" in refused[1] and "10 s each visitor" in refused[1]
    assert other == "built" and later == "built"


def test_a_client_over_its_share_gets_a_clear_429_page_and_json() -> None:
    client = TestClient(create_app(Settings(client_share=0.000001)), follow_redirects=False)
    assert client.get("/play?scenario=worked-example&step=3").status_code == 200  # builds: uses its share
    assert client.get("/play?scenario=worked-example&step=3").status_code == 200  # built: no share needed
    page = client.get("/play?scenario=worked-example&step=5")
    assert page.status_code == 429
    assert "each visitor gets here" in page.text and "Wait about" in page.text
    empty = {"format": "sptelab-scenario", "version": 1, "memslots": []}
    api = client.post("/api/run", json={"scenario": empty})
    assert api.status_code == 429 and "each visitor gets here" in api.json()["detail"]
