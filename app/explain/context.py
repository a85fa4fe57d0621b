"""What the sentences of a step's events share: the `Context` of the step so far (what the current fault
is, the run's spte layout) and the small readers of an event's values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.spte import (
    SpteMasks,
    level_name,
    spte_flags,
)

Event = Mapping[str, Any]


@dataclass(slots=True)
class Context:
    """What the step has done so far, for the events whose meaning depends on it, and the spte layout
    of the run's kernel generation, to read the values the events carry."""

    masks: SpteMasks
    fault_gfn: int | None = None
    fault_write: bool | None = None
    # What the fast path of the fault in hand marked, and whether the slot was logged (mark_page_dirty
    # runs before the fast_page_fault tracepoint that sums the fault up).
    fast_marked: int | None = None
    fast_logged: bool | None = None


def _hex(value: object) -> str:
    return f"{value:#x}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 16) if value.startswith("0x") else int(value)
    return 0


def _where(ev: Event) -> str:
    return f"L{ev.get('level')}[{_hex(ev.get('index'))}]"


def _flags(value: object, ctx: Context) -> str:
    return " ".join(spte_flags(_int(value), ctx.masks)) or "not present"


def _size(level: object) -> str:
    return level_name(level) if isinstance(level, int) and 1 <= level <= 4 else f"level {level}"


def _access(write: object) -> str:
    return "store" if write else "load"
