"""The timeline strip: one lane per preset, one marker per step, read off the runs' step records.

Each marker says what its step did under that preset (a fast or slow fault, a harvest of the dirty log,
an invariant violated, pages the migration's verdict found lost) by a glyph and in words, so where the
presets part is visible at a glance. Everything comes from `app.records.StepRecord`, the summary pass's
record of each step: building the strip never runs a step.

A long scenario would make the strip as long as the scenario, so it is bounded (docs/ui-hooks.md): up to
`FULL_MARKS` steps every step has its marker; beyond that, the `WINDOW` steps either side of the one
shown have theirs, and the rest of the scenario is folded into about `SPANS` overview spans, each
summarising its steps and jumping to the most telling of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from app.records import StepRecord
from engine.ops.registry import OPS

# Every step has its marker up to this many steps.
FULL_MARKS = 120
# Beyond FULL_MARKS: the steps either side of the one shown that keep their markers.
WINDOW = 30
# Beyond FULL_MARKS: at most this many overview spans for the rest of the scenario.
SPANS = 48

# The ops that hand the dirty log to userspace (a harvest): their `harvest` facet (engine/ops).
HARVEST_OPS = frozenset(name for name, spec in OPS.items() if spec.harvest is not None)

# The glyphs, one per kind of event: a shape that says it without colour.
GLYPH_FAST = "△"
GLYPH_SLOW = "▲"
GLYPH_HARVEST = "⇣"
GLYPH_VIOLATION = "⚠"
GLYPH_LOST = "✕"
GLYPH_QUIET = "·"
GLYPH_UNKNOWN = "?"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _glyphs(slow: int, fast: int, harvest: object, violations: object, lost: int) -> str:
    """A marker's or a span's glyphs: the costlier fault kind seen, then harvest, violation, lost pages."""
    out = GLYPH_SLOW if slow else GLYPH_FAST if fast else ""
    if harvest:
        out += GLYPH_HARVEST
    if violations:
        out += GLYPH_VIOLATION
    if lost:
        out += GLYPH_LOST
    return out or GLYPH_QUIET


class Mark(NamedTuple):
    """One step of one lane. `n` is the step the marker jumps to (the state after scenario step n-1, the
    player's `step=n`); `known` is False for a step the lane's run has not reached."""

    n: int
    op: str
    known: bool
    fast: int = 0
    slow: int = 0
    harvest: bool = False
    violations: tuple[str, ...] = ()
    lost: int = 0
    # The op in words ("write 0x250"); the op's name when not given.
    label: str = ""

    @property
    def fault(self) -> str:
        """The fault kind to show: slow when any fault took the slow path (the costlier one), else fast,
        or "" for a step without a fault."""
        return "slow" if self.slow else "fast" if self.fast else ""

    @property
    def glyphs(self) -> str:
        if not self.known:
            return GLYPH_UNKNOWN
        return _glyphs(self.slow, self.fast, self.harvest, self.violations, self.lost)

    @property
    def text(self) -> str:
        """The marker in words (its title and accessible name)."""
        head = f"step #{self.n}: {self.label or self.op}"
        if not self.known:
            return f"{head}; not run yet under this preset"
        parts = []
        if self.fast or self.slow:
            faults = []
            if self.fast:
                faults.append(f"{self.fast} fast")
            if self.slow:
                faults.append(f"{self.slow} slow")
            parts.append(" and ".join(faults) + (" faults" if self.fast + self.slow != 1 else " fault"))
        if self.harvest:
            parts.append("dirty log harvested")
        if self.violations:
            names = ", ".join(dict.fromkeys(self.violations))
            parts.append(f"{_plural(len(self.violations), 'violation')} ({names})")
        if self.lost:
            parts.append(f"verdict: {_plural(self.lost, 'page')} lost")
        return head + "; " + ("; ".join(parts) if parts else "nothing of note")


class Span(NamedTuple):
    """A folded stretch of steps `first`..`last` (as `Mark.n`), summarised; the span's marker jumps to
    `target`, its most telling step (lost pages, then a violation, a slow fault, a harvest, else the
    first)."""

    first: int
    last: int
    target: int
    fast: int
    slow: int
    harvests: int
    violations: int
    lost: int
    unknown: int

    @property
    def glyphs(self) -> str:
        if self.unknown == self.last - self.first + 1:
            return GLYPH_UNKNOWN
        return _glyphs(self.slow, self.fast, self.harvests, self.violations, self.lost)

    @property
    def text(self) -> str:
        head = f"steps #{self.first}–#{self.last}"
        parts = []
        if self.slow or self.fast:
            parts.append(f"{self.slow} slow and {self.fast} fast faults")
        if self.harvests:
            parts.append(_plural(self.harvests, "harvest"))
        if self.violations:
            parts.append(_plural(self.violations, "violation"))
        if self.lost:
            parts.append(f"{_plural(self.lost, 'page')} lost")
        if self.unknown:
            parts.append(f"{self.unknown} not run yet")
        body = "; ".join(parts) if parts else "nothing of note"
        return f"{head}: {body}; jumps to step #{self.target}"


@dataclass(slots=True)
class Lane:
    variant: str
    own: bool  # the player's own preset (its run, what-if switches included)
    note: str  # shown beside the name: "this player", "+ what-if"
    items: list[Mark | Span]


@dataclass(slots=True)
class TimelineView:
    step: int
    total: int
    lanes: list[Lane]
    # Whether the strip is bounded (a window of markers and overview spans) rather than every step.
    windowed: bool
    # Steps whose markers are shown, as Mark.n: every step, or the window around the one shown.
    first: int
    last: int


def mark_of(n: int, op: str, record: StepRecord | None, label: str = "") -> Mark:
    """The marker of step n (scenario index n-1) from its record, or unknown without one."""
    harvest = op in HARVEST_OPS
    if record is None:
        return Mark(n, op, False, harvest=harvest, label=label)
    return Mark(
        n,
        op,
        True,
        fast=record.fast,
        slow=record.slow,
        harvest=harvest,
        violations=record.violations,
        lost=record.lost,
        label=label,
    )


def _rank(mark: Mark) -> int:
    if not mark.known:
        return 0
    if mark.lost:
        return 5
    if mark.violations:
        return 4
    if mark.slow:
        return 3
    if mark.harvest:
        return 2
    return 1


def _span(marks: Sequence[Mark]) -> Span:
    best = max(marks, key=_rank)  # max keeps the first of equals: the earliest step of the highest rank
    known = [m for m in marks if m.known]
    return Span(
        first=marks[0].n,
        last=marks[-1].n,
        target=best.n,
        fast=sum(m.fast for m in known),
        slow=sum(m.slow for m in known),
        harvests=sum(1 for m in known if m.harvest),
        violations=sum(len(m.violations) for m in known),
        lost=sum(m.lost for m in known),
        unknown=len(marks) - len(known),
    )


def window_of(step: int, total: int, *, full: int = FULL_MARKS, window: int = WINDOW) -> tuple[int, int]:
    """The steps (as Mark.n, 1..total) that get a marker of their own when `step` is shown."""
    if total <= full:
        return 1, total
    width = 2 * window + 1
    first = max(1, min(step - window, total - width + 1))
    return first, first + width - 1


def _folded(marks: Sequence[Mark], size: int) -> list[Span]:
    """`marks` in spans aligned on multiples of `size` steps, so every lane folds at the same places."""
    out: list[Span] = []
    start = 0
    while start < len(marks):
        n = marks[start].n
        end = start + (size - (n - 1) % size)
        out.append(_span(marks[start:end]))
        start = end
    return out


def lane_items(
    ops: Sequence[str],
    records: Sequence[StepRecord],
    first: int,
    last: int,
    *,
    spans: int = SPANS,
    describe: Callable[[int], str] | None = None,
) -> list[Mark | Span]:
    """One lane: markers for steps first..last, the steps before and after folded into spans.
    `describe(n)` words step n's op for its marker (asked only for the markers drawn)."""
    total = len(ops)

    def mark(n: int, drawn: bool = True) -> Mark:
        label = describe(n) if drawn and describe is not None else ""
        return mark_of(n, ops[n - 1], records[n - 1] if n - 1 < len(records) else None, label)

    if first == 1 and last == total:
        return [mark(n) for n in range(1, total + 1)]
    size = max(1, -(-total // spans))
    before = [mark(n, False) for n in range(1, first)]
    after = [mark(n, False) for n in range(last + 1, total + 1)]
    return [*_folded(before, size), *(mark(n) for n in range(first, last + 1)), *_folded(after, size)]


def timeline_view(
    step: int,
    total: int,
    ops: Sequence[str],
    lanes: Sequence[tuple[str, bool, str, Sequence[StepRecord]]],
    *,
    full: int = FULL_MARKS,
    window: int = WINDOW,
    spans: int = SPANS,
    describe: Callable[[int], str] | None = None,
) -> TimelineView:
    """The strip at `step`: for each lane (variant, own, note, its run's records so far), its items."""
    first, last = window_of(step, total, full=full, window=window)
    if describe is not None:
        # Each drawn step is worded once, not once per lane.
        words = {n: describe(n) for n in range(first, last + 1)}
        describe = words.__getitem__
    return TimelineView(
        step=step,
        total=total,
        lanes=[
            Lane(variant, own, note, lane_items(ops, records, first, last, spans=spans, describe=describe))
            for variant, own, note, records in lanes
        ],
        windowed=total > full,
        first=first,
        last=last,
    )
