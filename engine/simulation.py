"""Run a scenario one step at a time: `Simulation.step()` is the whole API, `run()` is repeated `step()`.

Nothing here knows about HTTP or terminals. Each step returns a `StepResult` assembled from what the
kernel functions recorded while it ran (the spte choke point, the tracepoints, the dirty marks), so the
result, the trace and the invariant checks cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from engine.collector import gc_paused
from engine.cpu import guest_accesses
from engine.dirty_log import (
    kvm_set_dirty_logging,
    kvm_vm_ioctl_clear_dirty_log,
    kvm_vm_ioctl_get_dirty_log,
)
from engine.dirty_ring import harvest_and_reset
from engine.emulate import emulated_accesses
from engine.invariants import StepChecker, Violation
from engine.kvm import FaultRecord, Kvm
from engine.kvm_main import kvm_flush_remote_tlbs
from engine.memslot import KvmMemorySlot
from engine.migration import Migration, migrate_begin, migrate_end, migrate_round
from engine.policy import Policy
from engine.scenario import (
    ClearDirtyLogStep,
    DisableDirtyLogStep,
    EnableDirtyLogStep,
    FlushTlbStep,
    GetDirtyLogStep,
    MigrateBeginStep,
    MigrateEndStep,
    MigrateRoundStep,
    NoteStep,
    ReadStep,
    ResetDirtyRingStep,
    Scenario,
    Step,
    WriteStep,
    ZapAllStep,
    step_to_json,
)
from engine.trace import Call, Event, Trace
from engine.zap import kvm_mmu_invalidate_zap_all_pages, kvm_mmu_zap_all

# How a read or write step reaches guest memory: "mmu", the CPU through the TLB, the sptes and the fault
# path (engine.cpu); "emulated", KVM's instruction emulator, which reads and writes guest memory without
# any spte and marks every store dirty (engine.emulate).
GuestExecution = Literal["mmu", "emulated"]
GUEST_EXECUTIONS: tuple[GuestExecution, ...] = get_args(GuestExecution)


@dataclass(frozen=True, slots=True)
class SpteChange:
    """One spte write as the choke point recorded it, named by its sp (level, first gfn) and index."""

    level: int
    sp_gfn: int
    index: int
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class StepResult:
    index: int
    op: dict[str, object]
    fault_counts: dict[str, int]
    marked_dirty: list[int]
    dirty_log: list[int] | None
    tlb_flushes: int
    violations: list[Violation]
    # Only with tracing on (detail "full"): the per-fault rows, every spte write, the trace.
    faults: list[FaultRecord] | None
    spte_changes: list[SpteChange] | None
    events: list[Event] | None
    # The ioctl the step made that the kernel refused under the policy's dirty-log mode, as
    # "KVM_GET_DIRTY_LOG: ENXIO"; None when nothing failed.
    error: str | None = None
    # With the trace: the kernel functions entered while it was recorded (engine.trace.call_order puts
    # the events in call order with them). Not part of the result JSON, whose events stay in emission order.
    calls: list[Call] | None = None


def _calls_kept(trace: Trace) -> list[Call]:
    """The calls entered while events were still kept: a sink that keeps only the first events (a capped
    trace) has nothing to show under the calls after them."""
    kept = len(trace.events)
    return [call for call in trace.calls if call.start < kept]


class Simulation:
    """One scenario under one policy. Deterministic: the same inputs give the same steps, bit for bit."""

    def __init__(
        self,
        scenario: Scenario,
        policy: Policy,
        *,
        detail: str = "full",
        guest_execution: GuestExecution = "mmu",
    ) -> None:
        if guest_execution not in GUEST_EXECUTIONS:
            raise ValueError(
                f"unknown guest execution {guest_execution!r} (known: {', '.join(GUEST_EXECUTIONS)})"
            )
        self.guest_execution: GuestExecution = guest_execution
        self.scenario = scenario
        self.policy = policy
        self.detail = detail
        vm = scenario.vm
        slots = [
            KvmMemorySlot(
                slot_id=m.id,
                base_gfn=m.base_gfn,
                npages=m.npages,
                host_level=m.host_level,
                base_pfn=m.base_pfn,
                host_writable=m.host_writable,
                host_cow_copies=m.host_cow == "copy",
                largepages_enabled=vm.max_level > 1,
            )
            for m in scenario.memslots
        ]
        self.kvm = Kvm(policy, slots, vm.vcpus, vm.max_level, vm.ept_ad, trace=detail == "full")
        self.checker = StepChecker()
        self.migration = Migration()
        self.migrated = False
        self.index = 0
        self.violations: list[Violation] = []

    def set_trace(self, trace: Trace | None) -> None:
        """Trace the next steps into `trace` (full detail), or run them untraced (summary) with None.

        A shell that shows one step of a long run replays most steps untraced and traces only the one
        it shows, possibly into a sink of its own that keeps a bounded number of events."""
        self.detail = "full" if trace is not None else "summary"
        self.kvm.tp = trace if trace is not None else Trace(on=False)

    @property
    def done(self) -> bool:
        return self.index >= len(self.scenario.steps)

    def step(self) -> StepResult:
        """Execute the next step, check the invariants, and describe what happened."""
        if self.done:
            raise IndexError("the scenario has no more steps")
        step = self.scenario.steps[self.index]
        kvm = self.kvm
        log = kvm.new_step()
        with gc_paused():
            self._execute(step)
            violations = self.checker.check_step(kvm, self.index)
            if self.index == len(self.scenario.steps) - 1:
                violations += self.checker.finish(kvm, self.index)
        self.violations.extend(violations)
        full = self.detail == "full"
        result = StepResult(
            index=self.index,
            op=step_to_json(step),
            fault_counts={"fast": log.fast_faults, "slow": log.slow_faults},
            marked_dirty=list(log.marked_dirty),
            dirty_log=log.dirty_log,
            tlb_flushes=log.tlb_flushes,
            violations=violations,
            faults=log.faults if full else None,
            spte_changes=[SpteChange(sp.level, sp.gfn, i, old, new) for sp, i, old, new in log.spte_changes]
            if full
            else None,
            events=list(kvm.tp.events) if full else None,
            error=log.ioctl_error,
            calls=_calls_kept(kvm.tp) if full else None,
        )
        self.index += 1
        return result

    def run(self) -> list[StepResult]:
        return [self.step() for _ in range(len(self.scenario.steps) - self.index)]

    def _slot(self, slot_id: int) -> KvmMemorySlot:
        return self.kvm.memslots.by_id[slot_id]

    def _execute(self, step: Step) -> None:
        kvm = self.kvm
        if isinstance(step, ReadStep | WriteStep):
            access = emulated_accesses if self.guest_execution == "emulated" else guest_accesses
            access(kvm, kvm.vcpus[step.vcpu], step.gfn, step.count, step.stride, step.is_write)
        elif isinstance(step, EnableDirtyLogStep | DisableDirtyLogStep):
            kvm_set_dirty_logging(kvm, self._slot(step.slot), isinstance(step, EnableDirtyLogStep))
        elif isinstance(step, GetDirtyLogStep):
            kvm.log.dirty_log = kvm_vm_ioctl_get_dirty_log(kvm, self._slot(step.slot))
        elif isinstance(step, ClearDirtyLogStep):
            kvm_vm_ioctl_clear_dirty_log(kvm, self._slot(step.slot), step.first, step.num)
        elif isinstance(step, ResetDirtyRingStep):
            kvm.log.dirty_log = harvest_and_reset(kvm)
        elif isinstance(step, FlushTlbStep):
            kvm_flush_remote_tlbs(kvm, "userspace", under_mmu_lock=False)
        elif isinstance(step, ZapAllStep):
            # A memslot deletion or move: 3.14/3.16 invalidate the generation; the model of 6.x zaps all.
            if kvm.era6:
                kvm_mmu_zap_all(kvm)
            else:
                kvm_mmu_invalidate_zap_all_pages(kvm)
        elif isinstance(step, MigrateBeginStep):
            self.migrated = True
            migrate_begin(kvm, self.migration)
        elif isinstance(step, MigrateRoundStep):
            kvm.log.dirty_log = migrate_round(kvm, self.migration)
        elif isinstance(step, MigrateEndStep):
            kvm.log.dirty_log = migrate_end(kvm, self.migration)
        elif not isinstance(step, NoteStep):
            raise AssertionError(f"the validator let an unknown op through: {step.op!r}")
