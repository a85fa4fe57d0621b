"""What the summary pass learns about each step: a `StepRecord`, small enough to keep one per step of
a long scenario, from which the timeline, the landing cards and a step's weight are read without
running the step again."""

from __future__ import annotations

from typing import NamedTuple

from engine.kvm import StepLog
from engine.ops.registry import access_count
from engine.scenario import Scenario
from engine.simulation import StepResult

# A dirty log longer than this is kept as its length and a digest only.
_KEEP_DIRTY_LOG = 4096


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


def step_accesses(scenario: Scenario, index: int) -> int:
    step = scenario.steps[index]
    return access_count(step)


def step_record(result: StepResult, log: StepLog, accesses: int, lost: int = 0) -> StepRecord:
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
