"""Run a scenario one step at a time: `Simulation.step()` is the whole API, `run()` is repeated `step()`.

Nothing here knows about HTTP or terminals. Each step returns a `StepResult` assembled from what the
kernel functions recorded while it ran (the spte choke point, the tracepoints, the dirty marks), so the
result, the trace and the invariant checks cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from engine.collector import gc_paused
from engine.guest_pt import GuestPaging
from engine.invariants import StepChecker, Violation
from engine.kvm import FaultRecord, Kvm
from engine.memslot import KvmMemorySlot
from engine.migration import Migration
from engine.ops.registry import Step, op_spec
from engine.paging_tmpl import PAGING64
from engine.policy import Policy, for_shadow_host
from engine.scenario import Scenario
from engine.shadow_invariants import ShadowStepChecker
from engine.trace import Call, Event, Trace

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
    op: Step  # the result JSON writes it as engine.ops.registry.step_to_json does
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
        paging = scenario.guest is None or scenario.guest.paging
        host_policy = for_shadow_host(policy) if vm.mmu == "shadow" else policy
        self.kvm = Kvm(
            host_policy, slots, vm.vcpus, vm.max_level, vm.ept_ad, trace=detail == "full", mmu=vm.mmu,
            guest_paging=paging,
        )
        # Under shadow paging: the guest's tables in its memory, each address space's CR3, and the
        # shadow MMU's hooks for a 64-bit guest. Each vCPU loads its root when it first enters the guest.
        self.guest_cr3s: list[int] = []
        guest = scenario.built_guest()
        if guest is not None and scenario.guest is not None and self.kvm.shadow:
            self.kvm.guest = guest.tables
            self.kvm.paging_ops = PAGING64
            self.guest_cr3s = guest.cr3s
            for vcpu in self.kvm.vcpus:
                vcpu.paging = GuestPaging(
                    cr3=guest.cr3s[0], cr0_wp=scenario.guest.cr0_wp, efer_nx=scenario.guest.efer_nx
                )
        self.checker: StepChecker = ShadowStepChecker() if self.kvm.shadow else StepChecker()
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
            op=step,
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

    def _execute(self, step: Step) -> None:
        """The step, by its op's `run` facet (engine/ops)."""
        op_spec(step).run(self, step)
