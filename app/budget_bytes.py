"""One byte budget for everything the app keeps between requests (SPTELAB_CACHE_BYTES).

Every cache that holds something a request brought (parsed scenarios, runs with their snapshots and
cursors, built views, rendered pages, live-kernel results) joins one `ByteBudget`, which sums their
bytes and, when the sum passes the limit, evicts the least recently used entry of whichever cache holds
the oldest one: one recency order across caches, so a flood of one kind of request (unique share codes,
unique pages) pushes out the oldest entries of any kind instead of growing its own cache. Each cache
measures its entries itself (exact byte lengths where it holds bytes, calibrated estimates for live
objects, `deep_size` for view data), and the budget checks the sum after every insertion.

A few small memoisations over values the app derives (a Markdown rendering, a link's quoted scenario, a
bitmap row's cells) keep a fixed number of entries of bounded size: they are booked as a constant
reserve (`FIXED_RESERVE`) at their worst case, so the limit holds for them too without measuring them.
"""

from __future__ import annotations

import gc
import itertools
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from engine.codec import MAX_URL_BYTES
from engine.policy import Policy
from engine.scenario import MAX_DESCRIPTION_CHARS

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# The fixed-size memoisations (their maxsize, times each entry's worst case in bytes):
# - app.render.markdown: a description of at most MAX_DESCRIPTION_CHARS characters; the HTML of hostile
#   Markdown ("- a\n" lists, links with their rel attribute) is at most ~16 bytes per character;
MARKDOWN_ENTRIES = 16
# - app.links._source_query: a share code is at most one URL long, kept as the key and as its quoting;
SOURCE_QUERY_ENTRIES = 16
# - app.views.bitmap._cells_html: a row of 32 cells of about 110 bytes each.
CELL_ROWS = 1024
FIXED_RESERVE = (
    MARKDOWN_ENTRIES * (MAX_DESCRIPTION_CHARS * 4 + MAX_DESCRIPTION_CHARS * 16)
    + SOURCE_QUERY_ENTRIES * 3 * MAX_URL_BYTES
    + CELL_ROWS * 32 * 110
)


class Member(Protocol):
    """A cache under the budget: its bytes, the stamp of its least recently used entry, and a way to
    drop that entry (returning the bytes freed)."""

    @property
    def bytes(self) -> int: ...

    def oldest(self) -> int | None: ...

    def evict_oldest(self) -> int: ...


class ByteBudget:
    """The accountant: the limit, the caches under it, and one clock that orders their entries."""

    def __init__(self, limit: int, reserve: int = FIXED_RESERVE) -> None:
        self.limit = limit
        # Booked up front, at most a quarter of the limit (a tiny budget still caches something).
        self.reserve = min(reserve, limit // 4)
        self._members: list[Member] = []
        self._clock = itertools.count(1)
        self._lock = threading.Lock()
        # The largest total seen after an insertion was settled: what the tests hold to the limit.
        self.peak = self.reserve
        self.evictions = 0

    def join(self, member: Member) -> None:
        with self._lock:
            self._members.append(member)

    def tick(self) -> int:
        """A stamp later than every one handed out before (itertools.count is atomic under the GIL)."""
        return next(self._clock)

    @property
    def total(self) -> int:
        return self.reserve + sum(member.bytes for member in self._members)

    def settle(self, coming: int = 0) -> None:
        """Evict, oldest entry first across every cache, until the total is within the limit, with room
        left for `coming` bytes a request is about to build (a state thawed to be shown)."""
        with self._lock:
            total = self.total
            while total + coming > self.limit:
                victim: Member | None = None
                first = 0
                for member in self._members:
                    stamp = member.oldest()
                    if stamp is not None and (victim is None or stamp < first):
                        victim, first = member, stamp
                if victim is None:
                    break
                member = victim
                total -= member.evict_oldest()
                self.evictions += 1
            self.peak = max(self.peak, total)

    def stats(self) -> dict[str, int]:
        return {"limit": self.limit, "total": self.total, "peak": self.peak, "evictions": self.evictions}


# Objects a view may point at that belong to something else (the scenario, the policy) or to nobody
# (classes, functions, modules): never counted as the view's.
_SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, BaseModel, Policy)


def deep_size(root: object) -> int:
    """The bytes of an object and everything it holds, each object once (sys.getsizeof over the
    containers' referents). For view data: dataclasses, tuples, lists, dicts and strings."""
    seen: set[int] = set()
    stack: list[object] = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SHARED):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


class Lru(Generic[K, V]):
    """A thread-safe LRU map, bounded by its entry count and, when it has a budget, by the budget's
    bytes: `weigh(key, value)` is an entry's size (keys count too: a page's key holds its URL)."""

    def __init__(
        self,
        size: int,
        budget: ByteBudget | None = None,
        weigh: Callable[[K, V], int] | None = None,
    ) -> None:
        self.size = size
        self._budget = budget
        self._weigh = weigh
        self._lock = threading.Lock()
        self._items: OrderedDict[K, tuple[V, int, int]] = OrderedDict()
        self._bytes = 0
        if budget is not None:
            budget.join(self)

    def attach(self, budget: ByteBudget) -> None:
        """Put a cache made before the budget (a module's) under it."""
        self._budget = budget
        budget.join(self)

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            value, weight, _ = hit
            self._items[key] = (value, weight, self._stamp())
            self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        weight = self._weigh(key, value) if self._weigh is not None else 0
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, weight, self._stamp())
            self._bytes += weight
            while len(self._items) > self.size:
                _, (_, dropped, _) = self._items.popitem(last=False)
                self._bytes -= dropped
        if self._budget is not None:
            self._budget.settle()

    def _stamp(self) -> int:
        return self._budget.tick() if self._budget is not None else 0

    # --- as a member of the budget -------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        return self._bytes

    def oldest(self) -> int | None:
        with self._lock:
            for _, _, stamp in self._items.values():
                return stamp
            return None

    def evict_oldest(self) -> int:
        with self._lock:
            if not self._items:
                return 0
            _, (_, weight, _) = self._items.popitem(last=False)
            self._bytes -= weight
            return weight

    def __len__(self) -> int:
        return len(self._items)


def weigh_any(key: Any, value: Any) -> int:
    """An entry's bytes by walking it (for view data, whose lists are capped)."""
    return deep_size(key) + deep_size(value)
