"""The C allocator's settings for a long-running server (glibc only; elsewhere nothing is done).

Python's objects come from its own pools, but every larger block (a page being rendered, a snapshot's
bytes, a table's list of 512 sptes) comes from malloc, and glibc gives each thread that allocates its own
arena, up to eight per core. Requests run on a pool of threads, so a few minutes of traffic spreads the
caches and the garbage of page builds over dozens of arenas, each holding freed memory it cannot return:
RSS settles far above what the caches hold. Two arenas keep the threads from waiting on each other's
allocations while bounding that spread, and `trim` hands the free pages of every arena back to the
kernel (the collector's sweep calls it, once a minute), so RSS follows the caches down after evictions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt's parameter (malloc.h): the most arenas malloc creates.
M_ARENA_MAX = -8
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def limit_arenas() -> None:
    """At most ARENAS arenas (unless MALLOC_ARENA_MAX says otherwise): before the request threads start."""
    if _LIBC is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)


def trim() -> None:
    """Return every arena's free pages to the kernel."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
