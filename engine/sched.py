"""`cond_resched()`: the points of the engine's long walks where the host may run something else.

The kernel's long MMU walks (the TDP MMU's iterators, the rmap walks over a memslot, the zap of every
page) call cond_resched so that one ioctl over a gigabyte does not hold a CPU for the whole walk. The
engine's walks call it at the same places, between two shadow pages. It changes nothing the engine
computes: by default it does nothing at all, and a simulation stays a pure function of its scenario.

A program that runs simulations for several clients at once installs a hook (`set_resched`) that lets
other work go first, or stops the walk by raising. A step stopped that way is left half done: the
simulation it belongs to cannot go on and must be thrown away (the web app's run cache rebuilds it from
its last checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable

# The installed hook, if any: a list of at most one, so that installing it rebinds no module name.
_hook: list[Callable[[], None]] = []


def set_resched(hook: Callable[[], None] | None) -> None:
    """Install `hook` as what cond_resched does (None: nothing)."""
    _hook[:] = [hook] if hook is not None else []


def cond_resched() -> None:
    """A point where a long walk may be paused, or stopped by an exception from the hook."""
    for hook in _hook:
        hook()
