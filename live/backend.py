"""A scenario run on this machine's kernel: its guest accesses as guest code, its dirty-log steps as ioctls.

`run_on_kernel` gives, per scenario step, what the live kernel's dirty log returned, in the shape of the
engine's `StepResult.dirty_log`: the sorted gfns for a harvesting step, None for every other step.
`run_with_stats` gives the same with the kernel's statistics (`live.stats`) read around every step, from
which `live.execution` tells whether the kernel's MMU or its instruction emulator ran the guest.

- read, write: the program of `live.guest_code` runs on the step's vCPU until it ends (hlt, or the
  native guest's `out`);
- enable_dirty_log, disable_dirty_log: KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES set or
  cleared (a flags-only change);
- get_dirty_log: KVM_GET_DIRTY_LOG;
- clear_dirty_log: KVM_CLEAR_DIRTY_LOG over pages [first, first + num) of the slot, every mask bit set
  (its dirty_log is None: the ioctl returns nothing);
- reset_dirty_ring: every vCPU's dirty ring harvested in order, then KVM_RESET_DIRTY_RINGS; its dirty_log
  is the sorted, de-duplicated gfns harvested;
- migrate_begin, migrate_round, migrate_end: as `engine.migration` drives them: begin enables logging on
  every slot not logged yet (dirty_log None); a round returns the sorted union of what every logged
  slot's KVM_GET_DIRTY_LOG returned, followed, in the manual-protect modes, by a KVM_CLEAR_DIRTY_LOG of
  exactly those pages, or in ring mode the harvest of every ring and KVM_RESET_DIRTY_RINGS; end runs a
  last round and then disables the logging begin enabled;
- note: nothing.

An ioctl the dirty-log mode has no use for fails on the kernel as the engine models it, and the step's
dirty_log is then None: KVM_GET_DIRTY_LOG and KVM_CLEAR_DIRTY_LOG with the dirty ring on (ENXIO),
KVM_RESET_DIRTY_RINGS without it (EINVAL). Any other failure is an error.

What the live backend cannot express is refused before anything runs (`refusal`), with a one-line reason:
`flush_tlb` and `zap_all` (no ioctl asks the kernel for either), gfns the 32-bit guest cannot address or
that collide with the guest-physical pages the VM keeps for itself, more guest memory than the bound
below, slot ids the kernel keeps for itself, and, in ring mode, more writes by one vCPU between two
harvests than half the ring holds.

A shadow-paging scenario (`vm.mmu: "shadow"`) runs on the native guest only, on its own page tables
(`live.shadow_guest`): its accesses, PTE stores, INVLPG and MOV CR3 are the guest's own instructions
(`live.shadow_run`), every page of its slots is touched by the host first, and each vCPU enters the
guest once before the first step; `KernelRun` then also says which gfns are the live VM's own
(`system_gfns`), the faults it took for them per step (traced), and the counters after that entry.

`memslots[].host_page` of 2M or 1G backs the slot with transparent huge pages for the native guest (2M
at most: the host's THP), and its guest pages are 2M where alignment allows. Ignored, because the real
machine cannot reproduce them and they do not change what a dirty log returns: `base_pfn` and
`host_writable` (the host decides its own pfns and copy-on-write), `vm.max_page_level` and `vm.ept_ad`
(the host kernel's MMU configuration decides both).
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from engine.ops.base import Harvest
from engine.ops.guest_paging import InvlpgStep, SetCr3Step, WriteGpteStep
from engine.ops.registry import Step, op_spec
from engine.scenario import Scenario
from live.guest_code import access_program, shadow_access_program
from live.kernel_tables import KernelTables
from live.paging import GuestPageTables
from live.shadow_guest import SYSTEM_PAGES, layout
from live.shadow_guest import refusal as shadow_refusal
from live.shadow_run import GuestFaultError, ShadowGuestOps
from live.stats import Snapshot, VmStats
from live.syscalls import KvmError
from live.tracefs import TablePage, TraceSession, TraceStep, unavailable
from live.vm import (
    DIRTY_LOG_MODES,
    RESERVED_END_GFN,
    RESERVED_FIRST_GFN,
    RING_ENTRIES,
    X86_USER_MEM_SLOTS,
    KvmVm,
)

# Writes one vCPU may make between two harvests of the dirty ring (see _ring_refusal).
RING_WRITE_BUDGET = RING_ENTRIES // 2

# How long the guest of one run may run in all, every step together: a hostile scenario's steps cannot
# add up past it (each KVM_RUN is also bounded on its own: live.vm.RUN_TIMEOUT_S).
RUN_BUDGET_S = 60.0

# Guest memory this backend registers at most: the slots are sparse anonymous memory, but a whole-slot
# bitmap and a guest that touches every page of 4 GiB take seconds and gigabytes.
MAX_LIVE_PAGES = 1 << 18  # 1 GiB

GUEST_ADDRESS_END_GFN = 1 << 20  # 4 GiB: the guest code addresses memory with 32 bits

# The failures the engine models as "the kernel refuses this ioctl in this mode" (its dirty_log None).
_MODE_REFUSALS: frozenset[tuple[str, int]] = frozenset(
    {
        ("KVM_GET_DIRTY_LOG", errno.ENXIO),
        ("KVM_CLEAR_DIRTY_LOG", errno.ENXIO),
        ("KVM_RESET_DIRTY_RINGS", errno.EINVAL),
    }
)


_T = TypeVar("_T")

# The ops a shadow-paging guest runs as its own instructions, which the engine's facets leave to the
# live backend (they have no LiveTarget form).
GUEST_PAGING_OPS = frozenset({"write_gpte", "invlpg", "set_cr3"})

# The two guests the live VM can run (live.vm): 64-bit with page tables, or 32-bit with paging off.
Guest = Literal["native", "emulated"]


class UnsupportedScenarioError(ValueError):
    """A scenario the live backend cannot run; str() is the one-line reason."""


def refusal(scenario: Scenario, dirty_log_mode: str = "bitmap") -> str | None:
    """Why this scenario cannot run on the live kernel in this dirty-log mode, or None when it can."""
    if dirty_log_mode not in DIRTY_LOG_MODES:
        return f"dirty-log mode {dirty_log_mode!r} is unknown (known: {', '.join(DIRTY_LOG_MODES)})"
    total = 0
    for position, slot in enumerate(scenario.memslots):
        where = f"memslots[{position}] (slot {slot.id}, gfns {slot.base_gfn:#x}-{slot.end_gfn - 1:#x})"
        if slot.end_gfn > GUEST_ADDRESS_END_GFN:
            return (
                f"{where} reaches gfn {GUEST_ADDRESS_END_GFN:#x} (4 GiB) or above, which the live backend's"
                " 32-bit guest code cannot address"
            )
        if slot.end_gfn > RESERVED_FIRST_GFN:
            return (
                f"{where} overlaps gfns {RESERVED_FIRST_GFN:#x}-{RESERVED_END_GFN - 1:#x}, which the live VM"
                " keeps for the APICs and KVM's own pages (identity map, TSS)"
            )
        if slot.id >= X86_USER_MEM_SLOTS:
            return f"{where}: slot ids from {X86_USER_MEM_SLOTS} up are KVM's own on x86"
        total += slot.npages
    if total > MAX_LIVE_PAGES:
        return (
            f"the memslots hold {total} pages; the live backend runs at most {MAX_LIVE_PAGES}"
            " (1 GiB of guest memory)"
        )
    shadow = scenario.vm.mmu == "shadow"
    if shadow:
        reason = shadow_refusal(scenario)
        if reason is not None:
            return reason
    for index, step in enumerate(scenario.steps):
        if shadow and step.op in GUEST_PAGING_OPS:
            continue  # the shadow guest's own instructions (live.shadow_run)
        reason = op_spec(step).refusal
        if reason is not None:
            return f"step {index} ({step.op}): {reason}"
    if dirty_log_mode == "ring":
        return _ring_refusal(scenario)
    return None


def _ring_refusal(scenario: Scenario) -> str | None:
    """Keep every vCPU's writes between two harvests within RING_WRITE_BUDGET.

    A write to a logged page can take a ring entry each time (a guest whose accesses the kernel emulates
    pushes one per write, the same page again and again), and the kernel can let a vCPU run past its
    ring's soft limit, even past the whole ring, before KVM_EXIT_DIRTY_RING_FULL reaches userspace: entries
    are then lost. Half the ring leaves a wide margin.
    """
    written = [0] * scenario.vm.vcpus
    for index, step in enumerate(scenario.steps):
        spec = op_spec(step)
        access = spec.access(step)
        if access is not None and access.write:
            written[access.vcpu] += access.count
            if written[access.vcpu] > RING_WRITE_BUDGET:
                return (
                    f"step {index} ({step.op}): vCPU {access.vcpu} writes {written[access.vcpu]} times since"
                    f" the last harvest; in ring mode the live backend allows at most {RING_WRITE_BUDGET},"
                    f" half its {RING_ENTRIES}-entry ring (each write can take an entry)"
                )
        elif spec.harvest in (Harvest.RING, Harvest.ROUND):  # a ring harvest, in ring mode
            written = [0] * scenario.vm.vcpus
    return None


def code_gfn(slots: Iterable[tuple[int, int]], npages: int = 1) -> int:
    """The first gfn of the highest run of `npages` gfns below the reserved window that no slot (base,
    npages) holds: the code page, or the native guest's system slot."""
    end = RESERVED_FIRST_GFN
    for base, count in sorted(slots, reverse=True):
        if base + count <= end - npages:
            break  # this slot and every one below it end before the run
        end = min(end, base)
    if end - npages < 0:
        raise UnsupportedScenarioError("no guest-physical page is free below 4 GiB for the guest code")
    return end - npages


def code_slot_id(slot_ids: Iterable[int]) -> int:
    """The smallest slot id the scenario does not use."""
    used = set(slot_ids)
    return next(candidate for candidate in range(len(used) + 1) if candidate not in used)


def _unless_refused(ioctl: str, call: Callable[[], _T]) -> _T | None:
    """call(), or None when the kernel refuses the ioctl the way the dirty-log mode makes it refuse."""
    try:
        return call()
    except KvmError as error:
        if (ioctl, error.errno) in _MODE_REFUSALS:
            return None
        raise


class _Run:
    """One scenario on one VM: executes steps in order, keeping the migration's bookkeeping. It is the
    `LiveTarget` (engine.ops.base) through which each op's `live` facet expresses itself; under shadow
    paging the guest's accesses and paging operations are its own instructions (`live.shadow_run`)."""

    def __init__(self, vm: KvmVm, scenario: Scenario, shadow: ShadowGuestOps | None = None) -> None:
        self.vm = vm
        self.scenario = scenario
        self.shadow = shadow
        self.logged: set[int] = set()
        self.enabled_by_migration: list[int] = []

    def step(self, step: Step) -> list[int] | None:
        """The step, by its op's `live` facet: the dirty log it returned, or None."""
        spec = op_spec(step)
        if self.shadow is not None:
            access = spec.access(step)
            if access is not None:
                self.shadow.access(access)
                return None
            if isinstance(step, WriteGpteStep):
                self.shadow.write_gpte(step.vcpu, step.table, step.index, step.pte)
                return None
            if isinstance(step, InvlpgStep):
                self.shadow.invlpg(step.vcpu, step.gva)
                return None
            if isinstance(step, SetCr3Step):
                self.shadow.set_cr3(step.vcpu, step.space)
                return None
        if spec.live is None:
            raise UnsupportedScenarioError(f"the live backend has no counterpart for op {step.op!r}")
        result: list[int] | None = spec.live(self, step)
        return result

    # engine.ops.base.LiveTarget

    def access(self, vcpu: int, gfn: int, count: int, stride: int, write: bool) -> None:
        self.vm.run_code(vcpu, access_program(gfn, count, stride, write, native=self.vm.native))

    def get_dirty_log(self, slot: int) -> list[int] | None:
        return _unless_refused("KVM_GET_DIRTY_LOG", lambda: self.vm.get_dirty_log(slot))

    def clear_dirty_log(self, slot: int, first: int, num: int) -> None:
        _unless_refused("KVM_CLEAR_DIRTY_LOG", lambda: self.vm.clear_dirty_log(slot, first, num))

    def reset_dirty_ring(self) -> list[int] | None:
        return _unless_refused("KVM_RESET_DIRTY_RINGS", self._harvest_and_reset)

    def migrate_begin(self) -> None:
        self.enabled_by_migration = []
        for memslot in sorted(self.scenario.memslots, key=lambda m: m.id):
            if memslot.id not in self.logged:
                self.set_logging(memslot.id, True)
                self.enabled_by_migration.append(memslot.id)

    def migrate_end(self) -> list[int]:
        returned = self.migrate_round()
        for slot_id in self.enabled_by_migration:
            self.set_logging(slot_id, False)
        self.enabled_by_migration = []
        return returned

    def _harvest_and_reset(self) -> list[int]:
        gfns = {gfn for _, gfn in self.vm.harvest_rings()}
        self.vm.reset_rings()
        return sorted(gfns)

    def set_logging(self, slot: int, on: bool) -> None:
        self.vm.set_logging(slot, on)
        if on:
            self.logged.add(slot)
        else:
            self.logged.discard(slot)

    def migrate_round(self) -> list[int]:
        """As the engine's migration round: per mode, what a migrating userspace asks the kernel."""
        if self.vm.mode == "ring":
            return self._harvest_and_reset()
        returned: list[int] = []
        for slot_id in sorted(self.logged):
            gfns = self.vm.get_dirty_log(slot_id)
            if self.vm.mode != "bitmap" and gfns:
                self.vm.clear_dirty_log(slot_id, 0, self.vm.slots[slot_id].npages, gfns)
            returned.extend(gfns)
        return sorted(returned)


@dataclass(frozen=True, slots=True)
class KernelRun:
    """What one run of a scenario on the live kernel returned and what its statistics say it cost.

    `logs`: per step, the dirty log (as `run_on_kernel`). `step_stats`: per step, the VM's and vCPUs'
    counters that changed while the step ran (live.stats: cumulative and instant counters; unchanged ones
    left out). `totals`: the same over the whole run, every counter the kernel offers, zeros included.
    `stats_missing`: why there are no statistics (None when there are). `guest_accesses`: the loads and
    stores the guest code made; `pages_touched`: the distinct pages they touched, each for the first time
    in this fresh VM.
    """

    logs: list[list[int] | None]
    step_stats: list[Snapshot]
    totals: Snapshot
    stats_missing: str | None
    guest_accesses: int
    pages_touched: int
    guest: Guest = "emulated"
    traces: list[TraceStep] | None = None
    trace_missing: str | None = "not asked for"
    guest_tables: GuestPageTables | None = None
    # A shadow-paging scenario: the live VM's own gfns (its system slot), kept out of every comparison.
    system_gfns: range | None = None
    # Per step, the faults the kernel took for the live VM's own pages (its code's fetches), traced.
    system_faults: tuple[int, ...] | None = None
    # The kernel's leaf counters once the live VM's own pages were mapped, before the first step.
    baseline: Snapshot | None = None
    # A shadow-paging run: the slots on 2M host pages the host did not back with huge pages whole
    # (the model's large sptes then cannot exist on the kernel), in one line; None when all are.
    huge_missing: str | None = None

    def kernel_tables(self, upto: int) -> KernelTables | None:
        """The kernel's tables as its tracepoints showed them after step `upto` (0-based), or None when
        the run was not traced."""
        if self.traces is None:
            return None
        tables = KernelTables(guest_span=self._guest_span)
        for step in self.traces[: upto + 1]:
            tables.apply(step)
        return tables

    def _guest_span(self, page: TablePage) -> tuple[int, int] | None:
        return None if self.guest_tables is None else self.guest_tables.span(page.gfn, page.level)


def _accesses(scenario: Scenario) -> tuple[int, int]:
    """(guest accesses, distinct pages they touch) of the scenario's read and write steps, and of a
    shadow-paging guest's stores into its tables (each one store into the table's page)."""
    count = 0
    pages: set[int] = set()
    for step in scenario.steps:
        if isinstance(step, WriteGpteStep):
            count += 1
            pages.add(step.table)
            continue
        access = op_spec(step).access(step)
        if access is not None:
            count += access.count
            stride = access.stride if access.count > 1 else 0
            gfn = access.gfn
            pages.update(range(gfn, gfn + access.count * stride, stride) if stride else (gfn,))
    return count, len(pages)


def run_with_stats(
    scenario: Scenario,
    dirty_log_mode: str = "bitmap",
    *,
    device: str | None = None,
    guest: Guest = "emulated",
    trace: bool = False,
    budget_s: float = RUN_BUDGET_S,
) -> KernelRun:
    """Run the scenario on a fresh VM of the live kernel, reading its statistics around every step.

    `guest`: "native" runs the 64-bit guest with page tables (through the kernel's MMU where the kernel
    runs it natively), "emulated" the 32-bit guest with paging off. `trace`: read the kernel's kvmmmu
    tracepoints per step where this process can (`live.tracefs`); `trace_missing` says why not.
    `budget_s`: the guest runs at most this long in all; past it the run fails with GuestTimeoutError.

    Raises UnsupportedScenarioError (with `refusal`'s reason) before opening anything when the scenario
    cannot be expressed, and `live.vm.KvmError` when the device or an ioctl fails.
    """
    reason = refusal(scenario, dirty_log_mode)
    if reason is not None:
        raise UnsupportedScenarioError(reason)
    shadow = scenario.vm.mmu == "shadow"
    if shadow and guest != "native":
        raise UnsupportedScenarioError(
            "a shadow-paging scenario runs on the native guest only: its guest runs on its own page tables"
        )
    accesses, pages = _accesses(scenario)
    native = guest == "native"
    trace_missing = (unavailable() if trace else "not asked for") if native else "the guest was emulated"
    with contextlib.ExitStack() as owned:
        vm = owned.enter_context(
            KvmVm(scenario.vm.vcpus, dirty_log_mode=dirty_log_mode, device=device, native=native)
        )
        vm.deadline = time.monotonic() + budget_s
        for slot in scenario.memslots:
            vm.add_slot(slot.id, slot.base_gfn, slot.npages, huge=native and slot.host_page != "4K")
        system_id = code_slot_id(slot.id for slot in scenario.memslots)
        used = [(slot.base_gfn, slot.npages) for slot in scenario.memslots]
        guest_ops: ShadowGuestOps | None = None
        system_gfns: range | None = None
        huge_missing: str | None = None
        built = scenario.built_guest() if shadow else None
        if built is not None:
            placed = layout(built, code_gfn(used, SYSTEM_PAGES))
            vm.boot_shadow(system_id, placed)
            guest_ops = ShadowGuestOps(vm, placed, used)
            system_gfns = placed.system_gfns()
            short = [
                f"slot {slot.slot_id}: {vm.huge_backed(slot) >> 20} of {slot.size >> 20} MiB"
                for slot in vm.slots.values()
                if slot.huge and vm.huge_backed(slot) < slot.size
            ]
            huge_missing = "; ".join(short) + " on huge pages" if short else None
        elif native:
            vm.boot_native(system_id, code_gfn(used, vm.system_pages()))
        else:
            vm.add_code_slot(system_id, code_gfn(used))
        session = owned.enter_context(TraceSession()) if trace_missing is None else None
        stats = owned.enter_context(VmStats(vm))
        run = _Run(vm, scenario, guest_ops)
        logs: list[list[int] | None] = []
        step_stats: list[Snapshot] = []
        traces: list[TraceStep] = []
        first = stats.snapshot()
        baseline_at: Snapshot | None = None
        if guest_ops is not None:
            # Each vCPU enters the guest once, so that the code page's spte exists before the first step
            # (its fault and its leaf are the live VM's, not the scenario's).
            for index in range(len(vm.vcpus)):
                vm.run_code(index, shadow_access_program([]))
            baseline_at = stats.snapshot()
        before = baseline_at or first
        if session is not None:
            session.take()  # the boot's own faults are not a step's
        for index, step in enumerate(scenario.steps):
            try:
                logs.append(run.step(step))
            except GuestFaultError as error:
                raise UnsupportedScenarioError(f"step {index} ({step.op}): {error}") from None
            after = stats.snapshot()
            step_stats.append(after.minus(before))
            before = after
            if session is not None:
                traces.append(session.take())
        system_faults = None
        if system_gfns is not None and session is not None:
            system_faults = tuple(
                sum(1 for gfn in trace.spte_requested if gfn in system_gfns) for trace in traces
            )
        return KernelRun(
            logs=logs,
            step_stats=step_stats,
            totals=before.minus(baseline_at or first, keep_zero=True),
            stats_missing=stats.missing,
            guest_accesses=accesses,
            pages_touched=pages,
            guest=guest,
            traces=traces if session is not None else None,
            trace_missing=trace_missing,
            guest_tables=vm.guest_tables,
            system_gfns=system_gfns,
            system_faults=system_faults,
            baseline=None if baseline_at is None else baseline_at.minus(first, keep_zero=True),
            huge_missing=huge_missing,
        )
    raise AssertionError("unreachable")  # pragma: no cover  (ExitStack does not swallow)


def run_on_kernel(
    scenario: Scenario, dirty_log_mode: str = "bitmap", *, device: str | None = None
) -> list[list[int] | None]:
    """Run the scenario on a fresh VM of the live kernel: per step, the dirty log it returned (or None).

    Raises UnsupportedScenarioError (with `refusal`'s reason) before opening anything when the scenario
    cannot be expressed, and `live.vm.KvmError` when the device or an ioctl fails.
    """
    return run_with_stats(scenario, dirty_log_mode, device=device).logs
