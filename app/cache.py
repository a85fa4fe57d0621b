"""The simulation cache: every run the pages show, kept with checkpoints so that any step is cheap to show.

A run is one scenario under one policy, keyed by (canonical share code, policy). It holds:

- the *frontier*, a Simulation run forward with tracing off (detail "summary"), and a compact
  `StepRecord` (app.records) for every step it has passed: fault counts, dirty-log digest, violation
  count and how much work the step did;
- *checkpoints*, snapshots (app.replay) of the frontier every `checkpoint_interval` steps (and sooner
  after heavy steps), so showing step N replays at most one interval; a snapshot also waits until the
  steps since the last one did work in proportion to the state (`checkpoint_copy_work`): copying a big
  state costs at most a few times the run, however many small steps follow it;
- *cursors*, the last few states handed out and given back, so that stepping forward is one step.

To show step N (the state after N steps, with step N-1 as "the current step"), `Run.at` takes a cursor
at N, or at N-1 and runs one step, or thaws the nearest checkpoint before N and replays to N-1; the
last step runs with tracing on (detail "full", its trace capped), unless the summary pass found it too
heavy to trace (then its snapshot is shown as recorded). Memory stays bounded: the run count, each
run's checkpoints and cursors, and the total bytes of all stored states (app.state_bytes) have limits
from the settings. Every run has its own lock; the states `at` hands out are private copies, so building
a page from one needs no lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from app.budget_bytes import ByteBudget
from app.records import StepRecord, step_accesses, step_record
from app.replay import CappedTrace, Shown, copy_work, freeze, replay_to, set_tracing, thaw
from app.room import checkpoint, waiting_for
from app.settings import Settings
from app.state_bytes import record_weight, shown_weight, sim_weight
from engine.collector import gc_paused
from engine.ops.registry import op_spec
from engine.policy import Policy
from engine.scenario import Scenario
from engine.simulation import Simulation

# Spte locations whose history the inspector has asked for, kept per run.
_HISTORIES_PER_RUN = 32
# A step's own cost in StepRecord.cost units (about 1 µs each) beyond what its record counts: a note,
# which counts nothing, takes about 15 µs.
STEP_COST = 15


@dataclass(slots=True)
class _History:
    upto: int = 0
    changes: list[tuple[int, int, int]] = field(default_factory=list)  # (step index, old, new)


class Run:
    """One scenario under one policy; see the module docstring."""

    def __init__(
        self,
        key: tuple[str, Policy],
        scenario: Scenario,
        policy: Policy,
        settings: Settings,
        grown: Callable[[int], None] | None = None,
    ) -> None:
        self.key = key
        # The cache's budget, told when the run has grown (a snapshot taken: it evicts what that pushed
        # over the limit then, rather than once the whole pass is done) and before a state is thawed to
        # be shown (it makes room for one more state of the frontier's size).
        self._grown = grown
        self.scenario = scenario
        self.policy = policy
        self.total = len(scenario.steps)
        self.lock = threading.RLock()
        self._settings = settings
        self._frontier: Simulation | None = Simulation(scenario, policy, detail="summary")
        self.records: list[StepRecord] = []
        self._records_weight = 0
        # Each snapshot holds the (untraced) result of the step that led to it and that step's log, so a
        # step too heavy to trace is shown from its snapshot without running it again.
        self._checkpoints: dict[int, bytes] = {0: freeze(self._frontier_at())}
        self._checkpoint_total = len(self._checkpoints[0])
        self._frontier_weight = sim_weight(self._frontier_at())
        self._work = 0
        self._cursors: OrderedDict[int, Shown] = OrderedDict()
        self._cursor_weight = 0
        self._histories: OrderedDict[tuple[int, int, int], _History] = OrderedDict()

    # --- the summary pass ------------------------------------------------------------------------------

    def ensure(self, n: int) -> None:
        """Run the frontier until it has passed `n` steps (or the end), checkpointing on the way."""
        settings = self._settings
        with waiting_for(self.lock), gc_paused():
            target = min(n, self.total)
            try:
                self._advance(target, settings)
            finally:
                self._frontier_weight = sim_weight(self._frontier) if self._frontier is not None else 0

    def _advance(self, target: int, settings: Settings) -> None:
        """The summary pass from where the frontier is to `target` steps. A build may stop (its client
        gone) between two steps, its progress kept, or inside one, at the engine's cond_resched
        points: that step is half done, and the frontier goes back to its newest checkpoint."""
        if len(self.records) >= target:
            return
        sim = self._frontier_at()
        while len(self.records) < target:
            checkpoint()
            index = len(self.records)
            try:
                result = sim.step()
            except BaseException:
                self._rewind()
                raise
            verdict = sim.migration.lost if op_spec(result.op).ends_migration else None
            record = step_record(result, sim.kvm.log, step_accesses(self.scenario, index), len(verdict or ()))
            self.records.append(record)
            self._records_weight += record_weight(record)
            self._work += record.cost + STEP_COST
            done = index + 1
            due = done % settings.checkpoint_interval == 0 or self._work >= settings.checkpoint_work
            if due and self._work >= copy_work(sim, settings.checkpoint_copy_work):
                blob = freeze(sim, result)
                self._checkpoints[done] = blob
                self._checkpoint_total += len(blob)
                self._work = 0
                self._thin_checkpoints()
                self._frontier_weight = sim_weight(sim)
                if self._grown is not None:
                    self._grown(0)
            # The step's log is recorded (and snapshotted with it if due): the frontier need not keep
            # it, and a step over a gigabyte logs 262 144 sptes, each keeping its table alive.
            sim.kvm.new_step()

    def _rewind(self) -> None:
        """Put the frontier back at its newest checkpoint, forgetting the records after it: its state
        is that of a step stopped half way, from which no step can go on. The snapshot is thawed when
        the frontier is next needed, not now: the half-done state is still alive while its exception
        unwinds, and two of them at once is what a budget must not see."""
        done = max(k for k in self._checkpoints if k <= len(self.records))
        self._frontier = None
        del self.records[done:]
        self._work = 0

    def _frontier_at(self) -> Simulation:
        """The frontier, thawed from the newest checkpoint if a rewind dropped it."""
        if self._frontier is None:
            sim, _ = thaw(self._checkpoints[len(self.records)], self.scenario)
            set_tracing(sim, None)
            sim.kvm.new_step()  # the snapshot's step log: recorded already, as in _advance
            self._frontier = sim
        return self._frontier

    @property
    def finished(self) -> Simulation:
        """The frontier after the whole scenario (for summaries; never hand it out for changes)."""
        self.ensure(self.total)
        with waiting_for(self.lock):
            return self._frontier_at()

    def _thin_checkpoints(self) -> None:
        """Keep a run's checkpoints within half the cache budget: drop every second one, keeping the
        first and the newest, until they fit (the replay distance doubles, the memory halves)."""
        budget = self._settings.cache_bytes // 2
        while self._checkpoint_total > budget and len(self._checkpoints) > 2:
            keys = sorted(self._checkpoints)
            for key in keys[1:-1:2]:
                self._checkpoint_total -= len(self._checkpoints.pop(key))

    # --- showing a step --------------------------------------------------------------------------------

    def at(self, n: int) -> Shown:
        """A private copy of the state after `n` steps (0 ≤ n ≤ total), with step n-1's result.

        Give it back with `park` when done, so the next step forward starts from it.
        """
        with waiting_for(self.lock):
            self.ensure(n)
            cursor = self._take_cursor(n)
            if cursor is not None:
                return cursor
            if self._grown is not None:
                # A state about the frontier's size is thawed next, and its view and page are built from it.
                self._grown(2 * self._frontier_weight)
            if n == 0:
                sim, _ = thaw(self._checkpoints[0], self.scenario)
                return Shown(0, sim, None, {}, False)
            traced = self.records[n - 1].cost <= self._settings.trace_step_limit
            if not traced and n in self._checkpoints:
                # Too heavy to trace, and snapshotted right after it ran: restore it rather than rerun it.
                sim, result = thaw(self._checkpoints[n], self.scenario)
                return Shown(n, sim, result, sim.kvm.log.touched, False)
            previous = self._take_cursor(n - 1)
            sim = previous.sim if previous is not None else self._replay_to(n - 1)
            set_tracing(sim, self._settings.trace_events if traced else None)
            result = sim.step()
            dropped = sim.kvm.tp.dropped if isinstance(sim.kvm.tp, CappedTrace) else 0
            set_tracing(sim, None)
            return Shown(n, sim, result, sim.kvm.log.touched, traced, dropped)

    def park(self, shown: Shown) -> None:
        """Keep a shown state as a cursor (the oldest cursors go first)."""
        limit = self._settings.cursors_per_run
        with waiting_for(self.lock):
            if limit <= 0 or shown.n in self._cursors:
                return
            self._cursors[shown.n] = shown
            self._cursor_weight += shown_weight(shown)
            while len(self._cursors) > limit or (
                len(self._cursors) > 1 and self._cursor_weight > self._settings.cache_bytes // 4
            ):
                _, old = self._cursors.popitem(last=False)
                self._cursor_weight -= shown_weight(old)

    def _take_cursor(self, n: int) -> Shown | None:
        shown = self._cursors.pop(n, None)
        if shown is not None:
            self._cursor_weight -= shown_weight(shown)
        return shown

    def _replay_to(self, m: int) -> Simulation:
        """A private copy of the state after `m` steps, from the nearest checkpoint at or before it."""
        return replay_to(self._checkpoints, self.scenario, m)

    # --- the inspector's history -----------------------------------------------------------------------

    def history(self, location: tuple[int, int, int], n: int) -> list[tuple[int, int, int]]:
        """Every step before `n` that changed the spte at (level, sp gfn, index): (step, old, new), where
        old is the value before the step and new the value after it."""
        level, sp_gfn, index = location
        with waiting_for(self.lock):
            found = self._histories.pop(location, None) or _History()
            if found.upto < n:
                self.ensure(n)
                sim = self._replay_to(found.upto)
                with gc_paused():
                    for step in range(found.upto, n):
                        checkpoint()
                        sim.step()
                        for (sp, i), old in sim.kvm.log.touched.items():
                            if i == index and sp.gfn == sp_gfn and sp.level == level and sp.spt[i] != old:
                                found.changes.append((step, old, sp.spt[i]))
                found.upto = n
            self._histories[location] = found
            while len(self._histories) > _HISTORIES_PER_RUN:
                self._histories.popitem(last=False)
            return [change for change in found.changes if change[0] < n]

    # --- accounting ------------------------------------------------------------------------------------

    @property
    def weight(self) -> int:
        """The bytes every state the run holds takes (read without the lock: four ints)."""
        return self._checkpoint_total + self._cursor_weight + self._frontier_weight + self._records_weight


class RunCache:
    """The runs, least recently used first out, bounded by count and, as a member of the app's byte
    budget, by the size of their states (snapshots exactly, live states estimated by sim_weight)."""

    def __init__(self, settings: Settings, budget: ByteBudget | None = None) -> None:
        self._settings = settings
        self._budget = budget if budget is not None else ByteBudget(settings.cache_bytes, reserve=0)
        self._lock = threading.Lock()
        self._runs: OrderedDict[tuple[str, Policy], Run] = OrderedDict()
        self._stamps: dict[tuple[str, Policy], int] = {}
        self._budget.join(self)

    def get(self, code: str, scenario: Scenario, policy: Policy) -> Run:
        key = (code, policy)
        with self._lock:
            run = self._runs.get(key)
            if run is not None:
                self._runs.move_to_end(key)
                self._stamps[key] = self._budget.tick()
                return run
        created = Run(key, scenario, policy, self._settings, self._budget.settle)
        with self._lock:
            run = self._runs.setdefault(key, created)
            self._runs.move_to_end(key)
            self._stamps[key] = self._budget.tick()
            while len(self._runs) > self._settings.cache_runs:
                old, _ = self._runs.popitem(last=False)
                self._stamps.pop(old, None)
        return run

    def trim(self) -> None:
        """Bring every cache back within the byte budget, now that the runs' states have grown."""
        self._budget.settle()

    # --- as a member of the budget -----------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """The bytes of every run's states (each run's weight is three ints, read without its lock)."""
        with self._lock:
            runs = list(self._runs.values())
        return sum(run.weight for run in runs)

    def oldest(self) -> int | None:
        with self._lock:
            for key in self._runs:
                return self._stamps.get(key, 0)
            return None

    def evict_oldest(self) -> int:
        with self._lock:
            if not self._runs:
                return 0
            key, run = self._runs.popitem(last=False)
            self._stamps.pop(key, None)
        return run.weight

    def __len__(self) -> int:
        return len(self._runs)
