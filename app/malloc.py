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

# mallopt's parameters (malloc.h): the most arenas malloc creates; the size from which a block is
# mapped on its own (and unmapped when freed); how much free memory at an arena's top is kept.
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
ARENAS = 2
# Fixed, these turn off glibc's sliding threshold, which after the first large block freed serves every
# block up to 32 MiB from the arenas: a snapshot's bytes or a page being built would then stay in RSS
# after it is gone. From 1 MiB a block is mapped and handed back when freed; a 1 MiB free top is trimmed.
MMAP_FROM = 1 << 20
TRIM_FROM = 1 << 20


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
    """At most ARENAS arenas, large blocks mapped apart and free tops trimmed (unless the environment's
    MALLOC_* variables say otherwise): before the request threads start."""
    if _LIBC is None:
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_FROM)
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        _LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_FROM)


def trim() -> None:
    """Return every arena's free pages to the kernel."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
