"""The price of a run, and of writing its result, before anything runs.

A shell that runs scenarios for others (the web app: the player's summary pass up to the step it shows, one
run per preset on /compare, the whole run with its result for /result.json and POST /api/run) must know
before it starts what a request will cost, so that it can refuse one beyond its budget instead of stopping
it halfway. This module prices a scenario in **work units** of about 10 µs of one core of CPython: about
one guest access that faults a 4 KiB page in on the summary pass. Without a policy the price is an upper
bound over every preset (the costliest is usually `modern`, which splits huge pages when logging starts and
recovers them when it stops; a policy that does neither pays nothing for them). It is calibrated, term by
term, by `benchmarks/budget.py`, which asserts that the CPU time per unit of every built-in lesson and of a
hostile set stays within 3x of the median.

Two prices are kept apart, because writing a result costs far more than running it:

- `run`: the summary pass (tracing off), what /play and /compare run;
- `rows`: the result JSON's per-step records in full detail (a row per fault, spte write, trace event and
  harvested slot, about 100 bytes and a unit each), what /result.json and POST /api/run with
  `"detail": "full"` write on top of the run; and the final state's rows (sptes, TLB entries, dirty bits),
  which every result holds.

The terms of the run, per step:

- every step: `STEP`, its own bookkeeping and invariant check (a note costs about that);
- read, write: `FAULT` per page the step can fault in (every access of a stride that moves; one with a
  stride of 0) and `TLB_HIT` per access that repeats a page (a TLB hit costs a tenth of a fault);
- zap_all: `TABLE_ZAPPED` per shadow page it can zap (3 per guest access since the last zap, bounded by
  the tables the slots can hold), plus the new root;
- enable_dirty_log: `SLOT` (the memslot's update), the sptes it write-protects (one per page the accesses
  can have mapped, 8 per access, bounded by the slot) at `PROTECT` each, and every page the slot's huge
  leaves can map at `SPLIT` (a preset that splits them eagerly builds a 4K spte per page);
- disable_dirty_log: `SLOT`, and the pages under the slot's huge leaves at `RECOVER` (a preset that
  recovers huge pages frees the 4K tables under them);
- get_dirty_log: `SLOT` per slot harvested, and `BITMAP` per page of its bitmap (read a long at a time);
- clear_dirty_log: `SLOT`, `BITMAP` per page of the range, and `PROTECT` per spte it can write-protect or
  build (one per page of the range, plus the 4K leaves that splitting the 2M and 1G pages each long of the
  range overlaps can build), amortised: a bit is cleared once after it is set, and only logging switched
  on (every bit set under INITIALLY_SET) and accesses that can fault set bits, so the CLEARs of a slot
  together protect at most what was mapped when logging started and a page per such access since;
- reset_dirty_ring: `SLOT` per vCPU (each ring is read; each entry was pushed by an access that paid for
  it, and a ring holds at most 4096);
- flush_tlb: `SLOT` per vCPU (each TLB is emptied; its entries were put there by accesses that paid);
- migrate_begin: enable_dirty_log over every slot and a copy of every page (`BITMAP` each);
  migrate_round: get_dirty_log over every slot; migrate_end: a last round, both sides compared page by
  page (`COMPARE` per page), and disable_dirty_log over every slot;
- creating the VM: `SETUP` per page (each slot's arrays) and `SLOT` per slot.

The terms of the rows written in full detail, per step: `RECORD` for the step's own record and its op;
`FAULT_ROWS` per page an access can fault in (the fault row, its spte writes with the prefetched
neighbours, its trace events) and `HIT_ROWS` per repeated access (its TLB-hit event); `SLOT_ROWS` per slot
or vCPU a step acts on (an ioctl's event); `SPTE_ROWS` per spte a step can write-protect, split, recover or
zap (an spte change and its event). The final state: a row per spte the accesses can have mapped and per
table they can have made, a TLB entry and a dirty bit per access (at most one per page and vCPU), at
`FINAL_ROWS` each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from engine.ops.registry import Step, op_spec
from engine.policy import Policy
from engine.scenario import Scenario

# The run's weights, in units per thing counted (see the module's docstring); calibrated by
# benchmarks/budget.py.
STEP = 1.0
FAULT = 0.7
TLB_HIT = 0.03
TABLE_ZAPPED = 8.0
SLOT = 0.3
PROTECT = 0.25
SPLIT = 0.1
RECOVER = 0.05
BITMAP = 1 / 2048
COMPARE = 1 / 512
SETUP = 1 / 512
# The rows' weights, in the same units.
RECORD = 3.0
FAULT_ROWS = 16.0
HIT_ROWS = 1.0
SLOT_ROWS = 1.0
SPTE_ROWS = 4.0
FINAL_ROWS = 1.0

# The most sptes one guest access can map (the faulting one and its prefetched neighbours), and the most
# shadow pages (tables) it can add.
MAPPED_PER_ACCESS = 8
TABLES_PER_ACCESS = 3


@dataclass(frozen=True, slots=True)
class WorkEstimate:
    """The price of creating the VM and running a scenario's first steps, in work units, by source (each
    part rounded up)."""

    setup: int  # creating the VM
    steps: int  # every step's own bookkeeping, and the tables zap_all reads
    accesses: int  # guest reads and writes
    slot_pages: int  # dirty-log, flush and migration ops: per slot (or vCPU) and per page they walk
    huge: int  # huge pages split when logging starts and recovered when it stops

    @property
    def total(self) -> int:
        return self.setup + self.steps + self.accesses + self.slot_pages + self.huge


@dataclass(frozen=True, slots=True)
class StepPrice:
    """One step's price: the run's by source, and the rows its full-detail record writes."""

    steps: float
    accesses: float
    slot_pages: float
    huge: float
    rows: float

    @property
    def run(self) -> float:
        return self.steps + self.accesses + self.slot_pages + self.huge


class Pricer:
    """Walks a scenario's steps in order, tracking what bounds the later ops' cost (see the docstring).

    Each op's `price` facet (engine/ops) names the method below that prices it."""

    def __init__(self, scenario: Scenario, policy: Policy | None = None) -> None:
        # Without a policy, the price bounds every one: huge pages split and recovered.
        self.split = SPLIT if policy is None or policy.eager_split or policy.split_on_fault != "drop" else 0.0
        self.recover = RECOVER if policy is None or policy.recover_on_disable else 0.0
        self.vcpus = scenario.vm.vcpus
        self.slot_pages = {slot.id: slot.npages for slot in scenario.memslots}
        self.all_pages = sum(self.slot_pages.values())
        self.slots = len(self.slot_pages)
        # One level-1 table per 512 pages, plus the partial ends and upper levels of each slot, plus the
        # root.
        self.max_tables = math.ceil(self.all_pages / 512) + 6 * self.slots + 1
        self.setup = self.all_pages * SETUP + self.slots * SLOT
        # The pages one large leaf of each slot can map: 1 where the VM or the host maps 4K only.
        self.large_span = {
            slot.id: 512 ** (min(scenario.vm.max_level, slot.host_level) - 1) for slot in scenario.memslots
        }
        self.accessed = 0  # guest accesses so far
        self.faultable = 0  # of them, the ones priced as faults
        self.since_zap = 0
        # What CLEAR can still write-protect in each slot, as (credit, faultable when it was counted): the
        # sptes mapped and split when logging started (all bits set under INITIALLY_SET), and since then a
        # page per access that can fault (only a write sets a bit again).
        self.clear_credit = {slot_id: (0, 0) for slot_id in self.slot_pages}

    def clearable(self, slot_id: int) -> int:
        """The most sptes a CLEAR of the slot can write-protect or build now: amortised over the CLEARs,
        each set bit is cleared once."""
        credit, counted_at = self.clear_credit[slot_id]
        return min(self.slot_pages[slot_id] + 512, credit + self.faultable - counted_at)

    def mapped(self, slot_id: int) -> int:
        """The most sptes of the slot the accesses so far can have mapped."""
        return min(self.slot_pages[slot_id], MAPPED_PER_ACCESS * self.faultable)

    def large_mapped(self, slot_id: int) -> int:
        """The most pages the slot's huge leaves can map so far: one huge page per access that can fault,
        bounded by the slot."""
        span = self.large_span[slot_id]
        return 0 if span == 1 else min(self.slot_pages[slot_id], span * self.faultable)

    def _enable(self, slot_id: int) -> tuple[float, float, float]:
        """(slot work, huge work, rows) of logging switched on for one slot."""
        protect = self.mapped(slot_id)
        large = self.large_mapped(slot_id)
        self.clear_credit[slot_id] = (protect + large, self.faultable)
        split_rows = large * SPTE_ROWS if self.split else 0.0
        return SLOT + protect * PROTECT, large * self.split, SLOT_ROWS + protect * SPTE_ROWS + split_rows

    def _disable(self, slot_id: int) -> tuple[float, float, float]:
        large = self.large_mapped(slot_id)
        return SLOT, large * self.recover, SLOT_ROWS + (large * SPTE_ROWS if self.recover else 0.0)

    def _get(self, slot_id: int) -> tuple[float, float]:
        return SLOT + self.slot_pages[slot_id] * BITMAP, SLOT_ROWS

    @staticmethod
    def _ioctl(slot: float = 0.0, huge: float = 0.0, rows: float = 0.0) -> StepPrice:
        return StepPrice(STEP, 0.0, slot, huge, RECORD + rows)

    def step(self, step: Step) -> StepPrice:
        """The step's price, by its op's `price` facet."""
        return op_spec(step).price(self, step)

    def access(self, count: int, stride: int) -> StepPrice:
        """read, write: a fault per page the accesses can fault in, a TLB hit per repeat."""
        fresh = 1 if stride == 0 else count
        repeats = count - fresh
        self.accessed += count
        self.faultable += fresh
        self.since_zap += fresh
        work = fresh * FAULT + repeats * TLB_HIT
        return StepPrice(STEP, work, 0.0, 0.0, RECORD + fresh * FAULT_ROWS + repeats * HIT_ROWS)

    def zap_all(self) -> StepPrice:
        tables = 1 + min(TABLES_PER_ACCESS * self.since_zap, self.max_tables)
        zapped = min(self.all_pages, MAPPED_PER_ACCESS * self.since_zap) + tables
        self.since_zap = 0
        return StepPrice(STEP + tables * TABLE_ZAPPED, 0.0, 0.0, 0.0, RECORD + zapped * SPTE_ROWS)

    def enable_dirty_log(self, slot_id: int) -> StepPrice:
        return self._ioctl(*self._enable(slot_id))

    def disable_dirty_log(self, slot_id: int) -> StepPrice:
        return self._ioctl(*self._disable(slot_id))

    def get_dirty_log(self, slot_id: int) -> StepPrice:
        slot, rows = self._get(slot_id)
        return self._ioctl(slot, rows=rows)

    def clear_dirty_log(self, slot_id: int, num: int) -> StepPrice:
        # Splitting can build up to 3 × 512 sptes per long of the range (two 2M pages and a 1G one).
        split = 3 * 512 * math.ceil(num / 64)
        protected = min(self.clearable(slot_id), num + split)
        self.clear_credit[slot_id] = (self.clearable(slot_id) - protected, self.faultable)
        slot = SLOT + num * BITMAP + protected * PROTECT
        return self._ioctl(slot, rows=SLOT_ROWS + protected * SPTE_ROWS)

    def per_vcpu(self) -> StepPrice:
        """reset_dirty_ring, flush_tlb: each vCPU's ring or TLB read once."""
        return self._ioctl(self.vcpus * SLOT, rows=self.vcpus * SLOT_ROWS)

    def nothing(self) -> StepPrice:
        """A note: the step's own bookkeeping."""
        return self._ioctl()

    def migrate_begin(self) -> StepPrice:
        slot = huge = rows = 0.0
        for slot_id in self.slot_pages:
            s, h, r = self._enable(slot_id)
            slot, huge, rows = slot + s, huge + h, rows + r
        slot += self.all_pages * BITMAP
        return self._ioctl(slot, huge, rows)

    def migrate_round(self) -> StepPrice:
        slot = rows = 0.0
        for slot_id in self.slot_pages:
            s, r = self._get(slot_id)
            slot, rows = slot + s, rows + r
        return self._ioctl(slot, rows=rows)

    def migrate_end(self) -> StepPrice:
        slot = huge = rows = 0.0
        for slot_id in self.slot_pages:
            s, r = self._get(slot_id)
            s2, h, r2 = self._disable(slot_id)
            slot, huge, rows = slot + s + s2, huge + h, rows + r + r2
        slot += self.all_pages * COMPARE
        return self._ioctl(slot, huge, rows)

    def final_rows(self) -> float:
        """The rows of the final state: every result (summary or full) holds them."""
        pages, accessed = self.all_pages, self.accessed
        sptes = min(pages + self.max_tables, (MAPPED_PER_ACCESS + TABLES_PER_ACCESS) * self.faultable)
        return (sptes + min(accessed, self.vcpus * pages) + min(accessed, pages)) * FINAL_ROWS


def step_prices(scenario: Scenario) -> Iterator[StepPrice]:
    """Each step's price, in order."""
    pricer = Pricer(scenario)
    for step in scenario.steps:
        yield pricer.step(step)


def estimate_work(scenario: Scenario, steps: int | None = None, policy: Policy | None = None) -> WorkEstimate:
    """The price of creating the VM and running the first `steps` steps (default: all) on the summary
    pass, by source: under `policy`, or the most any policy can cost."""
    pricer = Pricer(scenario, policy)
    b = a = s = h = 0.0
    for step in scenario.steps[:steps]:
        price = pricer.step(step)
        b, a, s, h = b + price.steps, a + price.accesses, s + price.slot_pages, h + price.huge
    return WorkEstimate(math.ceil(pricer.setup), math.ceil(b), math.ceil(a), math.ceil(s), math.ceil(h))


def cumulative_work(scenario: Scenario) -> list[int]:
    """`[w0, w1, ..., wN]`: wn is `estimate_work(scenario, n).total`, for a shell that asks it often."""
    pricer = Pricer(scenario)
    setup = math.ceil(pricer.setup)
    b = a = s = h = 0.0
    out = [setup]
    for step in scenario.steps:
        price = pricer.step(step)
        b, a, s, h = b + price.steps, a + price.accesses, s + price.slot_pages, h + price.huge
        out.append(setup + math.ceil(b) + math.ceil(a) + math.ceil(s) + math.ceil(h))
    return out


def estimate_result_rows(scenario: Scenario) -> int:
    """The rows of the final state of the scenario's result, in units: what every result writes."""
    pricer = Pricer(scenario)
    for step in scenario.steps:
        pricer.step(step)
    return math.ceil(pricer.final_rows())


def estimate_result(scenario: Scenario, *, full: bool, policy: Policy | None = None) -> int:
    """The price of running the whole scenario and writing its result: the run, the final state's rows,
    and in full detail every step's record (its faults, spte changes and trace events) with the run done
    in full detail. This is what /result.json (full) and POST /api/run (either detail) cost: under
    `policy`, or the most any policy can cost."""
    pricer = Pricer(scenario, policy)
    total = pricer.setup
    for step in scenario.steps:
        price = pricer.step(step)
        total += price.run + (price.rows if full else 0.0)
    return math.ceil(total + pricer.final_rows())


__all__ = [
    "Pricer",
    "StepPrice",
    "WorkEstimate",
    "cumulative_work",
    "estimate_result",
    "estimate_result_rows",
    "estimate_work",
    "step_prices",
]
