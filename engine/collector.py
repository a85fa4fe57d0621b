"""Keeping Python's cyclic garbage collector out of simulation work.

The engine's objects form no reference cycles (a shadow page knows its parents, never its children; an rmap
entry points at an spte's page, never back), so reference counting frees all of them. But a big step
allocates millions of tracked tuples, and the collector's passes over a heap of that size cost more than
the step itself. Pausing it is safe and keeps work proportional to what a step does.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block; re-enable it only if it was enabled before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
