"""Snapshots of a run's state and the states they give back.

A snapshot (`freeze`) is the state pickled to bytes, with the result of the step that led to it: ten
times smaller than the live objects and, for a big VM, faster to restore (`thaw`) than a
`copy.deepcopy` (only this process's own bytes are ever unpickled). Pickling costs in proportion to the
state, so a snapshot waits until the steps since the last one did work in proportion to it
(`copy_work`). `replay_to` thaws the nearest snapshot at or before a step and runs on to it, untraced;
a shown step is then run traced (`set_tracing`, its events capped by `CappedTrace`) and handed out as
a `Shown`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass

from app.room import checkpoint
from engine.collector import gc_paused
from engine.scenario import Scenario
from engine.shadow_page import KvmMmuPage
from engine.simulation import Simulation, StepResult
from engine.trace import Event, Trace

# A state's page contents cost as much to copy as one shadow page per this many guest pages.
PAGES_PER_COPIED_TABLE = 1 << 17


class CappedTrace(Trace):
    """The tracepoint sink of a shown step: keeps the first `cap` events and counts the rest."""

    __slots__ = ("cap", "dropped")

    def __init__(self, cap: int) -> None:
        super().__init__(on=True)
        self.cap = cap
        self.dropped = 0

    def emit(self, event: Event) -> None:
        if len(self.events) < self.cap:
            self.events.append(event)
        else:
            self.dropped += 1


@dataclass(slots=True)
class Shown:
    """The state after `n` steps, with the step that led there (`result`, None at step 0).

    `touched` maps every spte location step n-1 wrote to its value before the step. `traced` says whether
    `result` has the full detail (faults, spte writes, events); `dropped_events` counts trace events
    beyond the cap.
    """

    n: int
    sim: Simulation
    result: StepResult | None
    touched: dict[tuple[KvmMmuPage, int], int]
    traced: bool
    dropped_events: int = 0


def copy_work(sim: Simulation, per_table: int) -> int:
    """The work the steps since the last snapshot must have done before the next one is taken, in
    StepRecord.cost units: `per_table` (Settings.checkpoint_copy_work) for each shadow page of the state
    (its 512 sptes, their rmap entries), and as much again for the pages' contents per 128 Ki pages."""
    kvm = sim.kvm
    pages = sum(slot.npages for slot in kvm.memslots)
    return per_table * (len(kvm.active_mmu_pages) + pages // PAGES_PER_COPIED_TABLE)


def freeze(sim: Simulation, result: StepResult | None = None) -> bytes:
    """A snapshot of the state (and of the step that led to it). The scenario is a frozen value shared
    by every snapshot of the run: leave it out (a long scenario would be most of the bytes)."""
    scenario = sim.scenario
    sim.scenario = None  # type: ignore[assignment]
    try:
        with gc_paused():
            return pickle.dumps((sim, result), protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        sim.scenario = scenario


def thaw(blob: bytes, scenario: Scenario) -> tuple[Simulation, StepResult | None]:
    with gc_paused():
        # Only bytes this process pickled itself (freeze) are ever unpickled.
        sim, result = pickle.loads(blob)
    sim.scenario = scenario
    return sim, result


def set_tracing(sim: Simulation, cap: int | None) -> None:
    """Trace the next steps with at most `cap` events each, or (None) run them untraced."""
    sim.set_trace(None if cap is None else CappedTrace(cap))


def replay_to(checkpoints: Mapping[int, bytes], scenario: Scenario, m: int) -> Simulation:
    """A private copy of the state after `m` steps, from the nearest checkpoint at or before it."""
    start = max(k for k in checkpoints if k <= m)
    sim, _ = thaw(checkpoints[start], scenario)
    set_tracing(sim, None)
    with gc_paused():
        for _ in range(m - start):
            checkpoint()
            sim.step()
    return sim


def run_all(sim: Simulation) -> list[StepResult]:
    """`Simulation.run()` with a checkpoint before each step: a request's whole run, stoppable and in
    turns with the other builds (app/room.py)."""
    results = []
    while not sim.done:
        checkpoint()
        results.append(sim.step())
    return results
