"""The simulation cache: every run the pages show, kept with checkpoints so that any step is cheap to show.

A run is one scenario under one policy, keyed by (canonical share code, policy). It holds:

- the *frontier*, a Simulation run forward with tracing off (detail "summary"), and a compact
  `StepRecord` for every step it has passed: fault counts, dirty-log digest, violation count and how
  much work the step did;
- *checkpoints*, snapshots of the frontier every `checkpoint_interval` steps (and sooner after heavy
  steps), so showing step N replays at most one interval. A snapshot is the state pickled to bytes (with
  the result of the step that led to it): ten times smaller than the live objects and, for a big VM,
  faster to restore than a `copy.deepcopy` (only this process's own bytes are ever unpickled). Pickling
  costs in proportion to the state, so a snapshot also waits until the steps since the last one did work
  in proportion to it (`checkpoint_copy_work`): copying a big state costs at most a few times the run,
  however many small steps follow it;
- *cursors*, the last few states handed out and given back, so that stepping forward is one step.

To show step N (the state after N steps, with step N-1 as "the current step"), `Run.at` takes a cursor
at N, or at N-1 and runs one step, or thaws the nearest checkpoint before N and replays to N-1; the
last step runs with tracing on (detail "full", its trace capped), unless the summary pass found it too
heavy to trace (then its snapshot is shown as recorded). Memory stays bounded: the run count, each
run's checkpoints and cursors, and the total bytes of all stored states have limits from the settings.
Every run has its own lock; the states `at` hands out are private copies, so building a page from one
needs no lock.

What a request may ask the runs for is bounded before anything runs: `check_budget` refuses (413) a
request whose price (engine.estimate.estimate_work) exceeds `Settings.run_budget`, and
`too_heavy_to_write` whether a run's full-detail result (engine.estimate.estimate_result) is small enough
to write out (`Settings.result_work`).
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from app.budget_bytes import ByteBudget
from app.errors import AppError
from app.room import checkpoint, waiting_for
from app.settings import Settings
from engine.collector import gc_paused
from engine.estimate import estimate_result, estimate_work
from engine.kvm import StepLog
from engine.ops.registry import access_count, op_spec
from engine.policy import Policy
from engine.scenario import Scenario
from engine.shadow_page import KvmMmuPage
from engine.simulation import Simulation, StepResult
from engine.trace import Event, Trace

# A dirty log longer than this is kept as its length and a digest only.
_KEEP_DIRTY_LOG = 4096
# Spte locations whose history the inspector has asked for, kept per run.
_HISTORIES_PER_RUN = 32


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


class StepRecord(NamedTuple):
    """What the summary pass learned about one step. A tuple of plain values, so that the cyclic
    collector stops tracking it: a long scenario has one per step."""

    fast: int
    slow: int
    tlb_flushes: int
    marked_dirty: int
    # For get_dirty_log and migration steps: the gfns returned (None when longer than _KEEP_DIRTY_LOG),
    # their number and a digest that tells two logs apart.
    dirty_log: tuple[int, ...] | None
    dirty_log_len: int
    dirty_log_digest: int | None
    violations: tuple[str, ...]
    # Guest accesses, spte writes, faults and harvested pages: how heavy a full trace would be.
    cost: int
    # For a migrate_end step: how many pages its verdict found lost (the timeline marks the step).
    lost: int = 0


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


@dataclass(slots=True)
class _History:
    upto: int = 0
    changes: list[tuple[int, int, int]] = field(default_factory=list)  # (step index, old, new)


# Bytes a live VM state takes (see sim_weight), fitted to tracemalloc's count of a thawed state on the
# built-in lessons and on slots of 256 Ki pages written, read and logged at 4K, 2M and 1G (and
# tests/test_memory_bound.py checks the estimate is never below the measure):
# - a shadow page: its list of 512 sptes and its bookkeeping; under 6.x every empty entry holds the
#   non-present value (suppress-#VE), an int of its own, so a table costs five times more;
# - a present leaf: the spte's int and its rmap entry; a vCPU's TLB entry (a tuple in a dict);
# - a guest page: its content word and its share of the slot's arrays, and more while its slot is logged;
# - the VM's fixed part (vCPUs, statistics, logs).
# Counting only a full table per shadow page and each guest page, as before, was 2.1-2.6 times low on
# states with many present 4K leaves mapped through the TLB.
LIVE_BYTES_PER_TABLE = 4_608
LIVE_BYTES_PER_TABLE_6X = 23_552
LIVE_BYTES_PER_LEAF = 160
LIVE_BYTES_PER_TLB_ENTRY = 384
LIVE_BYTES_PER_PAGE = 18
LIVE_BYTES_PER_LOGGED_PAGE = 20
LIVE_BYTES_BASE = 300_000

# A step's own cost in StepRecord.cost units (about 1 µs each) beyond what its record counts: a note,
# which counts nothing, takes about 15 µs.
STEP_COST = 15
# A state's page contents cost as much to copy as one shadow page per this many guest pages.
PAGES_PER_COPIED_TABLE = 1 << 17


def copy_work(sim: Simulation, per_table: int) -> int:
    """The work the steps since the last snapshot must have done before the next one is taken, in
    StepRecord.cost units: `per_table` (Settings.checkpoint_copy_work) for each shadow page of the state
    (its 512 sptes, their rmap entries), and as much again for the pages' contents per 128 Ki pages."""
    kvm = sim.kvm
    pages = sum(slot.npages for slot in kvm.memslots)
    return per_table * (len(kvm.active_mmu_pages) + pages // PAGES_PER_COPIED_TABLE)


def sim_weight(sim: Simulation) -> int:
    """The size of a live VM state in bytes, estimated from its shadow pages, its present leaves (the
    statistics the choke point keeps), its TLB entries and its guest pages (see LIVE_BYTES_PER_TABLE).
    An estimate too high evicts runs that would have fit, and rebuilding them is what a busy server
    cannot afford; too low lets the caches outgrow their budget, so each constant is rounded up."""
    kvm = sim.kvm
    per_table = LIVE_BYTES_PER_TABLE_6X if kvm.era6 else LIVE_BYTES_PER_TABLE
    leaves = sum(kvm.stat.pages)
    tlb = sum(len(entries) for vcpu in kvm.vcpus for entries in vcpu.tlb.by_level)
    pages = logged = 0
    for slot in kvm.memslots:
        pages += slot.npages
        if slot.dirty_bitmap is not None:
            logged += slot.npages
    return (
        LIVE_BYTES_BASE
        + len(kvm.active_mmu_pages) * per_table
        + leaves * LIVE_BYTES_PER_LEAF
        + tlb * LIVE_BYTES_PER_TLB_ENTRY
        + pages * LIVE_BYTES_PER_PAGE
        + logged * LIVE_BYTES_PER_LOGGED_PAGE
    )


# A StepRecord's own bytes (a tuple of nine fields, its ints), and each gfn of a dirty log it keeps.
RECORD_BYTES = 200
RECORD_BYTES_PER_GFN = 40
# A cursor beside its live state: the traced step's result (its events capped) and, per spte the step
# wrote, its `touched` entry.
SHOWN_BYTES = 24_000
SHOWN_BYTES_PER_TOUCHED = 130


def record_weight(record: StepRecord) -> int:
    return RECORD_BYTES + (RECORD_BYTES_PER_GFN * len(record.dirty_log) if record.dirty_log else 0)


def shown_weight(shown: Shown) -> int:
    """A cursor's bytes: its live state and the step result it carries."""
    return sim_weight(shown.sim) + SHOWN_BYTES + SHOWN_BYTES_PER_TOUCHED * len(shown.touched)


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


def _accesses(scenario: Scenario, index: int) -> int:
    step = scenario.steps[index]
    return access_count(step)


def _record(result: StepResult, log: StepLog, accesses: int, lost: int = 0) -> StepRecord:
    dirty_log = result.dirty_log
    kept = tuple(dirty_log) if dirty_log is not None and len(dirty_log) <= _KEEP_DIRTY_LOG else None
    faults = result.fault_counts["fast"] + result.fault_counts["slow"]
    return StepRecord(
        fast=result.fault_counts["fast"],
        slow=result.fault_counts["slow"],
        tlb_flushes=result.tlb_flushes,
        marked_dirty=len(result.marked_dirty),
        dirty_log=kept,
        dirty_log_len=len(dirty_log) if dirty_log is not None else 0,
        dirty_log_digest=hash(tuple(dirty_log)) if dirty_log is not None else None,
        violations=tuple(v.invariant for v in result.violations),
        cost=accesses + len(log.touched) + 8 * faults + len(log.harvested) + len(result.marked_dirty),
        lost=lost,
    )


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
            record = _record(result, sim.kvm.log, _accesses(self.scenario, index), len(verdict or ()))
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
        start = max(k for k in self._checkpoints if k <= m)
        sim, _ = thaw(self._checkpoints[start], self.scenario)
        set_tracing(sim, None)
        with gc_paused():
            for _ in range(m - start):
                checkpoint()
                sim.step()
        return sim

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


def run_all(sim: Simulation) -> list[StepResult]:
    """`Simulation.run()` with a checkpoint before each step: a request's whole run, stoppable and in
    turns with the other builds (app/room.py)."""
    results = []
    while not sim.done:
        checkpoint()
        results.append(sim.step())
    return results


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


# ---------------------------------------------------------------------------------------------------------
# What one request may ask for


_SHRINK = {
    "accesses": "most of it guest accesses: lower the counts of its read and write steps",
    "slot_pages": (
        "most of it dirty-log, flush and migration steps, per memslot and per page: use fewer or smaller"
        " memslots, or fewer enable_dirty_log, get_dirty_log, clear_dirty_log and migrate steps"
    ),
    "huge": (
        "most of it huge pages split when logging starts and recovered when it stops: toggle logging"
        " less often on slots mapped with 2M or 1G pages"
    ),
    "steps": "most of it the steps themselves: use fewer steps, and fewer zap_all",
    "setup": "most of it creating the memslots: make them smaller",
}


def check_budget(
    settings: Settings,
    scenario: Scenario,
    per_run: int,
    *,
    steps: int,
    runs: int = 1,
    doing: str,
    earlier: bool = False,
) -> None:
    """Refuse (413), before anything runs, a request that would make the engine do more than
    `Settings.run_budget`: `runs` runs of the scenario's first `steps` steps, each estimated at `per_run`
    (engine.estimate.estimate_work; the caller usually has it precomputed). The message says what it
    would cost, what makes it big and how to shrink it; `earlier` offers showing an earlier step."""
    budget, setting = settings.run_budget, "SPTELAB_RUN_BUDGET"
    if settings.workshop:  # a room shares the server (app/workshop.py)
        budget, setting = settings.workshop_budget or settings.run_budget // 4, "SPTELAB_WORKSHOP_BUDGET"
    need = per_run * runs
    if need <= budget:
        return
    estimate = estimate_work(scenario, steps)
    parts = {
        "accesses": estimate.accesses,
        "slot_pages": estimate.slot_pages,
        "steps": estimate.steps,
        "setup": estimate.setup,
        "huge": estimate.huge,
    }
    biggest = max(parts, key=lambda name: parts[name])
    times = f"{runs} runs of about {per_run:,} each, " if runs > 1 else ""
    instead = "show an earlier step, or " if earlier else ""
    raise AppError(
        413,
        f"too much work for this server: {doing} needs about {need:,} units of work ({times}one unit is"
        f" about one guest access), and one request may ask for at most {budget:,} ({setting});"
        f" {_SHRINK[biggest]}. Or {instead}run it on your own machine with the command line, which has"
        " no such budget: sptelab run FILE.",
        hint="Download the scenario and run it with the command line (sptelab run FILE), or ask whoever"
        f" runs this server to raise {setting}.",
    )


def too_heavy_to_write(scenario: Scenario, policy: Policy, limit: int) -> str:
    """Why the full-detail result of this scenario is too large to write out in a response ("" when it is
    not), priced before anything runs (engine.estimate.estimate_result): the run in full detail, a row per
    fault, spte write, trace event and harvested slot of every step, and the final state's rows."""
    price = estimate_result(scenario, full=True, policy=policy)
    if price <= limit:
        return ""
    return f"running it in full detail and writing its result costs about {price:,} units of work"
