"""The room's scheduler: which request may run engine work, when, and for how long.

One process serves the room, and engine work is pure Python: two builds at once only take turns on the
interpreter lock, and a single global lock (what the app had) lets one client's heavy links hold every
other client's page for as long as they run. The scheduler bounds that in three ways:

- **Admission, per client and globally** (on the event loop, holding no thread while waiting). A client
  (the peer address, or the trusted forwarded one) has at most one build in flight: a burst of its own
  requests waits behind its own work. At most `slots` builds are admitted at once, first come first
  served across clients, so the thread pool always has threads left for cheap requests and `/healthz`.
- **Turns** (in the build threads). Admitted builds run one at a time, in turns of `turn` seconds: a
  build that has used its turn lets a waiting one go first at its next `checkpoint()` if that one's
  client has used the interpreter less lately (`Turns`). The run caches call `checkpoint()` between
  engine steps, and the engine's long walks call it inside a step (engine/sched.py, `cond_resched`).
  A page that a cache can answer never waits at all.
- **Cancellation.** A client that goes away (the connection closes) cancels its build: a waiting request
  leaves the queue, and a running one stops at its next checkpoint (`Cancelled`). Between two steps the
  run it was advancing keeps the steps done for the next request; inside a step, the run goes back to
  its newest snapshot (app/cache.py `Run`).

`checkpoint()` does nothing outside a build (the command line, the tests), so the caches call it
unconditionally.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from starlette.requests import Request

from app.errors import AppError

T = TypeVar("T")

# How often a request's connection is looked at while its build waits or runs.
DISCONNECT_POLL = 0.05
# A client's use of the interpreter counts half after this many seconds, a quarter after twice as long.
HALF_LIFE = 30.0
# The clients whose use is remembered, before those whose use has decayed to nothing are forgotten.
MAX_CLIENTS = 4096
FORGOTTEN = 1e-3


class Cancelled(Exception):  # noqa: N818 -- named after what happened, as asyncio's CancelledError
    """The client of the build went away: the build stopped at a checkpoint."""


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted build: whose it is, and whether its client has gone."""

    client: str
    gone: threading.Event = field(default_factory=threading.Event)


class Turns:
    """A fair, sliced mutex over the builds: one runs at a time, for at most `turn` seconds while
    another waits. Then the waiting build whose client has used the least CPU lately goes next, the
    earliest of equals first: the pick of the kernel's fair scheduler, with each client's recent use
    of the interpreter as its virtual runtime. A client whose heavy links have kept the interpreter
    busy thus waits while the others' pages are built, and runs whenever nobody else waits.

    Use decays by half every `half_life` seconds, so a client is judged by what it did lately."""

    def __init__(
        self, turn: float, clock: Callable[[], float] = time.monotonic, half_life: float = HALF_LIFE
    ) -> None:
        self.turn = turn
        self.half_life = half_life
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[Ticket] = []
        self._holder: Ticket | None = None
        self._since = 0.0
        # client -> (seconds of interpreter used, as of when)
        self._used: dict[str, tuple[float, float]] = {}

    def used(self, client: str) -> float:
        """The client's recent use, in seconds, decayed to now."""
        seconds, when = self._used.get(client, (0.0, 0.0))
        return seconds * 0.5 ** ((self._clock() - when) / self.half_life) if seconds else 0.0

    def _charge(self, ticket: Ticket) -> None:
        """Add the holder's time since its turn started (or since it was last charged) to its client."""
        now = self._clock()
        self._used[ticket.client] = (self.used(ticket.client) + now - self._since, now)
        self._since = now
        if len(self._used) > MAX_CLIENTS:
            for client in [client for client in self._used if self.used(client) < FORGOTTEN]:
                del self._used[client]

    def _next(self) -> Ticket:
        """The waiting build to run next (the queue holds at least one)."""
        return min(enumerate(self._queue), key=lambda item: (self.used(item[1].client), item[0]))[1]

    def acquire(self, ticket: Ticket) -> None:
        """Wait for the turn of `ticket`; Cancelled if its client goes while it waits."""
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._holder is not None or self._next() is not ticket:
                    if ticket.gone.is_set():
                        raise Cancelled
                    self._cond.wait(DISCONNECT_POLL)
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.remove(ticket)
            self._holder = ticket
            self._since = self._clock()

    def release(self, ticket: Ticket) -> None:
        with self._cond:
            if self._holder is ticket:
                self._charge(ticket)
                self._holder = None
                self._cond.notify_all()

    def checkpoint(self, ticket: Ticket) -> None:
        """Between two pieces of work: stop if the client has gone; once this build has used its turn,
        let a waiting one go first if its client has used less lately."""
        if ticket.gone.is_set():
            raise Cancelled
        if self._clock() - self._since < self.turn:
            return
        with self._cond:
            self._charge(ticket)
            if not self._queue or self.used(self._next().client) >= self.used(ticket.client):
                return
        self.release(ticket)
        self.acquire(ticket)

    @contextmanager
    def holding(self, ticket: Ticket) -> Iterator[None]:
        """Run the block as `ticket`'s build: in its turns, with `checkpoint()` and `waiting_for` acting
        for it."""
        self.acquire(ticket)
        _local.held = (self, ticket)
        try:
            yield
        finally:
            _local.held = None
            self.release(ticket)

    @property
    def waiting(self) -> int:
        return len(self._queue)


_local = threading.local()


def current() -> tuple[Turns, Ticket] | None:
    """The turns and ticket of the build this thread runs, if it runs one."""
    held: tuple[Turns, Ticket] | None = getattr(_local, "held", None)
    return held


def checkpoint() -> None:
    """A point between two pieces of engine work where a build may stop or let another go first."""
    held = current()
    if held is not None:
        held[0].checkpoint(held[1])


@contextmanager
def waiting_for(lock: threading.RLock | threading.Lock) -> Iterator[None]:
    """Hold `lock` for the block. A build that cannot take it at once gives up its turn while it waits:
    the holder of the lock may be another build waiting for that very turn."""
    held = current()
    if held is None or lock.acquire(blocking=False):
        if held is None:
            lock.acquire()
        try:
            yield
        finally:
            lock.release()
        return
    turns, ticket = held
    turns.release(ticket)
    try:
        lock.acquire()
    finally:
        try:
            turns.acquire(ticket)
        except BaseException:
            lock.release()
            raise
    try:
        yield
    finally:
        lock.release()


class Room:
    """Admission and turns for the app's builds (one per app)."""

    def __init__(
        self, slots: int, turn: float, share: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.slots = slots
        self.share = share
        self.turns = Turns(turn, clock)
        self._admitted = asyncio.Semaphore(slots)
        self._clients: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    async def run(self, request: Request, work: Callable[[], T], *, turns: bool = True) -> T:
        """Run `work` in a thread once the request is admitted, in turns with the other builds (unless
        `turns` is false: work that waits on something else than the interpreter); raises Cancelled
        when the client goes away first."""
        client = client_key(request)
        self._check_share(client)
        ticket = Ticket(client)
        watcher = asyncio.create_task(_watch(request, ticket))
        lock = self._client_lock(client)
        try:
            await _until_gone(lock.acquire(), ticket)
            try:
                await _until_gone(self._admitted.acquire(), ticket)
                try:
                    if not turns:
                        return await anyio.to_thread.run_sync(work)
                    return await anyio.to_thread.run_sync(self._in_thread, ticket, work)
                finally:
                    self._admitted.release()
            finally:
                lock.release()
        finally:
            watcher.cancel()
            self._client_done(client)

    def _check_share(self, client: str) -> None:
        """Refuse a new build to a client that has used more than its share of the interpreter lately
        (`share` seconds, none if 0): in a room, one visitor's links cannot keep the server busy for
        long, and its use halves every `HALF_LIFE` seconds until it may build again."""
        used = self.turns.used(client)
        if not self.share or used <= self.share:
            return
        wait = math.ceil(self.turns.half_life * math.log2(used / self.share))
        raise AppError(
            429,
            f"Your address has used {used:.0f} s of this server's time lately, more than the"
            f" {self.share:g} s each visitor gets here; pages already built still load.",
            hint=f"Wait about {wait} s, or run heavy scenarios on your own machine with `sptelab run`.",
        )

    def _in_thread(self, ticket: Ticket, work: Callable[[], T]) -> T:
        with self.turns.holding(ticket):
            return work()

    def _client_lock(self, client: str) -> asyncio.Lock:
        self._users[client] = self._users.get(client, 0) + 1
        return self._clients.setdefault(client, asyncio.Lock())

    def _client_done(self, client: str) -> None:
        left = self._users[client] - 1
        if left:
            self._users[client] = left
        else:
            del self._users[client]
            del self._clients[client]


def client_key(request: Request) -> str:
    """Who a request is from: the peer's address, which app.forwarded replaces by the forwarded one only
    for the proxies it trusts (`SPTELAB_FORWARDED_ALLOW_IPS`), so a client cannot choose it."""
    peer = request.client
    return peer.host if peer is not None else "unknown"


async def _watch(request: Request, ticket: Ticket) -> None:
    """Set the ticket's `gone` when the client closes its connection."""
    while not ticket.gone.is_set():
        if await request.is_disconnected():
            ticket.gone.set()
            return
        await asyncio.sleep(DISCONNECT_POLL)


async def _until_gone(waiting: Awaitable[object], ticket: Ticket) -> None:
    """Await an acquisition, or give it up (Cancelled) if the client goes first. An acquisition that
    completes as the client goes is kept: the caller holds it, releases it as usual, and its build stops
    at once (`Turns.acquire` sees the client gone)."""
    task = asyncio.ensure_future(waiting)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
        if done:
            task.result()
            return
        if ticket.gone.is_set():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                raise Cancelled from None
            return
