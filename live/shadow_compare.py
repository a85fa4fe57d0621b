"""A shadow-paging scenario's run on this machine's shadow MMU against a preset's model, step by step.

What is compared at every step, everything of the live VM's own system slot left out:

- the dirty log each harvest returns;
- the leaves per level: the kernel's `pages_4k` and `pages_2m` since the first step (the live VM's code
  page has its leaf from before it) against the model's present leaves at levels 1 and 2;
- the faults the step took: the change of `pf_taken`, less the faults the traced kernel took for the
  live VM's own code (by the gfn of their `kvm_mmu_spte_requested`), against the model's;
- the change of `pf_emulate` (stores emulated: into write-protected guest tables), `pf_spurious` (less
  the live VM's own, traced) and `mmu_unsync` (the pages unsync now);
- traced: every leaf the kernel set in the step for a gfn of a scenario slot (the last value set at
  each table entry) must be a present leaf of the model for that gfn at that level with the same W bit.
  A leaf the kernel set writable and then write-protected within the same step, by shadowing a guest
  table inside its range, is not held to its W: no tracepoint shows write protection.

One difference of this kernel (`kvm_pvm`) from upstream's shadow MMU is tolerated, by name
(`PVM_TOP_LEVEL`), and listed apart: a vCPU's first access under a top-level (PML4) entry that another
vCPU's fault linked after this vCPU last faulted takes one fault more on the kernel, which finds every
spte in place (`pf_spurious`, or its leaf set again to the value it had) and changes nothing. Measured:
vCPU 0 reads gfn 0x209 (a fault links PML4 entry 0 and maps it), then vCPU 1 reads 0x209: one fault on
the kernel, 17 of 20 runs spurious and 3 re-setting the same leaf; under upstream both vCPUs walk the
one shared root and vCPU 1 takes none, as the model does. A vCPU whose first access faults anyway
(another page) shows nothing, and after one fault under an entry it takes no more there: as if the
kernel kept a per-vCPU copy of the root's entries, refreshed by the vCPU's faults.

What is not compared: the values of the leaves beyond level and W (host pfns differ), write protection
and drops between steps (no tracepoint; the counters and later faults show their effects), and the
kernel's own counters the model does not keep.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.ops.guest_paging import WriteGpteStep
from engine.ops.registry import Step, op_spec
from engine.policy import make_policy
from engine.scenario import Scenario
from engine.shadow_page import kvm_mmu_page_get_gfn
from engine.simulation import Simulation
from engine.spte import PT64_ROOT_LEVEL, is_last_spte, is_shadow_present_pte, is_writable_pte
from live.backend import KernelRun
from live.tracefs import SpteSet, TraceStep

# What a comparison covers, as the result's `live.compared` lists it.
COMPARED = (
    "dirty_logs",
    "leaves_per_level",
    "leaf_w_bits",
    "faults",
    "pf_emulate",
    "pf_spurious",
    "mmu_unsync",
)

# Counters the model keeps under shadow paging in either generation, compared by their change per step.
COUNTERS = ("pf_emulate", "pf_spurious", "mmu_unsync")
LEVELS = {1: "pages_4k", 2: "pages_2m"}
WRITABLE = 1 << 1


# The known difference of kvm_pvm from upstream that a comparison tolerates (see above).
PVM_TOP_LEVEL = "pvm_top_level_refault"
TOLERATED = {
    PVM_TOP_LEVEL: "kvm_pvm: a vCPU's first access under a top-level entry another vCPU linked since its"
    " last fault faults once more, finding every spte in place (upstream shares one root: no fault)",
}
ROOT_SHIFT = 39


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing the kernel and the model did differently in one step; `tolerated` names the known
    difference of this kernel from upstream it is (TOLERATED), or is None."""

    step: int
    what: str  # one of COMPARED
    text: str  # the whole difference in words, with both numbers
    tolerated: str | None = None

    def to_json(self) -> dict[str, object]:
        entry: dict[str, object] = {"step": self.step, "what": self.what, "text": self.text}
        if self.tolerated is not None:
            entry["tolerated"] = self.tolerated
        return entry


def kernel_count(run: KernelRun, index: int, name: str) -> int:
    """The change of a VM counter, or of a vCPU counter summed over the vCPUs, in step `index`."""
    stats = run.step_stats[index]
    return stats.vm.get(name, 0) + sum(counters.get(name, 0) for counters in stats.vcpus)


def system_spurious(run: KernelRun, index: int) -> int:
    """The faults of the step for the live VM's own pages that set no spte (spurious: after MOV CR3 to
    a new root, the code's fetch links the system's tables again and finds its leaf in place)."""
    if run.traces is None or run.system_gfns is None:
        return 0
    trace = run.traces[index]
    requested = [gfn for gfn in trace.spte_requested if gfn in run.system_gfns]
    set_again = sum(1 for spte in trace.sptes_set if spte.gfn in requested)
    return max(0, len(requested) - set_again)


def model_leaves(sim: Simulation) -> list[tuple[int, int, bool]]:
    """(gfn, level, W) of every present leaf of the model."""
    return [
        (kvm_mmu_page_get_gfn(sp, index), sp.level, is_writable_pte(spte))
        for sp in sim.kvm.active_mmu_pages.values()
        for index, spte in enumerate(sp.spt)
        if is_shadow_present_pte(spte) and is_last_spte(spte, sp.level)
    ]


def _shadowed_inside(trace: TraceStep, leaf: SpteSet) -> bool:
    """Whether the kernel shadowed a guest table inside `leaf`'s range in this step (the trace does not
    order table creations among the sptes set, so any such creation in the step counts)."""
    end = leaf.gfn + (1 << (9 * (leaf.level - 1)))
    return any(not page.direct and leaf.gfn <= page.gfn < end for page in trace.tables_created)


def _in_slots(scenario: Scenario, gfn: int) -> bool:
    return any(slot.base_gfn <= gfn < slot.end_gfn for slot in scenario.memslots)


def _leaf_differences(
    scenario: Scenario, index: int, trace: TraceStep, leaves: list[tuple[int, int, bool]], preset: str
) -> list[Difference]:
    step = f"step {index} ({scenario.steps[index].op})"
    model: dict[tuple[int, int], set[bool]] = {}
    for gfn, level, writable in leaves:
        model.setdefault((gfn, level), set()).add(writable)
    last = {(s.table, s.index): s for s in trace.sptes_set if _in_slots(scenario, s.gfn)}
    differences = []
    for spte in last.values():
        writable = bool(spte.spte & WRITABLE)
        found = model.get((spte.gfn, spte.level))
        where = f"{step}: the kernel set a level-{spte.level} leaf for gfn {spte.gfn:#x}"
        if found is None:
            differences.append(Difference(index, "leaf_w_bits", f"{where}; {preset} has none"))
        elif writable not in found and not (writable and _shadowed_inside(trace, spte)):
            model_w = ", ".join(str(int(w)) for w in sorted(found))
            text = f"{where} with W {int(writable)}; {preset}'s has W {model_w}"
            differences.append(Difference(index, "leaf_w_bits", text))
    return differences


def _roots(sim: Simulation) -> dict[int, frozenset[int]]:
    """Every root of the model (by identity) with its present entries."""
    return {
        id(sp): frozenset(i for i, spte in enumerate(sp.spt) if is_shadow_present_pte(spte))
        for sp in sim.kvm.active_mmu_pages.values()
        if sp.level == PT64_ROOT_LEVEL
    }


def _step_vcpu(step: Step) -> int:
    vcpu = getattr(step, "vcpu", None)
    return vcpu if isinstance(vcpu, int) else -1


def _top_indexes(step: Step) -> tuple[int, set[int]]:
    """(the vCPU, the top-level indexes of the addresses it accesses) of an access step, else (-1, {})."""
    if isinstance(step, WriteGpteStep):
        return step.vcpu, {((step.table << 12) + step.index * 8) >> ROOT_SHIFT}
    access = op_spec(step).access(step)
    if access is None:
        return -1, set()
    first = access.gva if access.gva is not None else access.gfn << 12
    stride = access.stride if access.count > 1 else 0
    return access.vcpu, {(first + (k * stride << 12)) >> ROOT_SHIFT for k in range(access.count)}


def compare_run(
    scenario: Scenario, run: KernelRun, preset: str = "modern", dirty_log_mode: str = "bitmap"
) -> list[Difference]:
    """Every difference between the kernel's run of the scenario and the preset's model, in the live
    VM's dirty-log mode, step by step (the tolerated ones named)."""
    overrides = {"dirty_log_mode": dirty_log_mode} if dirty_log_mode != "bitmap" else {}
    sim = Simulation(scenario, make_policy(preset, overrides), detail="summary")
    differences: list[Difference] = []
    before = sim.kvm.stats()
    kernel_leaves = dict.fromkeys(LEVELS, 0)
    # Per (vCPU, root): the root's entries as the vCPU last saw them on the kernel (at its last fault).
    seen: dict[tuple[int, int], frozenset[int]] = {}
    for index, step in enumerate(scenario.steps):
        roots_before = _roots(sim)
        result = sim.step()
        vcpu, indexes = _top_indexes(step)
        refault = 0
        root = sim.kvm.vcpus[vcpu].root if vcpu >= 0 else None
        if root is not None:
            present = roots_before.get(id(root), frozenset())
            refault = 1 if indexes & (present - seen.get((vcpu, id(root)), frozenset())) else 0
        after = sim.kvm.stats()
        where = f"step {index} ({step.op})"
        model_log = sorted(result.dirty_log) if result.dirty_log is not None else None
        if run.logs[index] != model_log:
            differences.append(
                Difference(index, "dirty_logs", f"{where}: the kernel logged {_gfns(run.logs[index])},"
                           f" {preset} {_gfns(model_log)}")
            )
        for name in COUNTERS:
            kernel = kernel_count(run, index, name)
            if name == "pf_spurious":
                kernel -= system_spurious(run, index)
            model = after.get(name, 0) - before.get(name, 0)
            if kernel != model:
                text = f"{where}: {name} changed by {kernel} on the kernel, {model} in {preset}"
                tolerated = PVM_TOP_LEVEL if name == "pf_spurious" and kernel - model == refault else None
                differences.append(Difference(index, name, text, tolerated))
        actor = _step_vcpu(step)
        actor_root = sim.kvm.vcpus[actor].root if actor >= 0 else None
        if actor_root is not None and run.step_stats[index].vcpus[actor].get("pf_taken", 0):
            seen[(actor, id(actor_root))] = _roots(sim).get(id(actor_root), frozenset())
        before = after
        leaves = model_leaves(sim)
        for level, name in LEVELS.items():
            kernel_leaves[level] += kernel_count(run, index, name)
            model = sum(1 for _, at, _ in leaves if at == level)
            if kernel_leaves[level] != model:
                differences.append(
                    Difference(index, "leaves_per_level", f"{where}: {kernel_leaves[level]} level-{level}"
                               f" leaves on the kernel, {model} in {preset}")
                )
        if run.system_faults is not None:
            kernel = kernel_count(run, index, "pf_taken") - run.system_faults[index]
            model = result.fault_counts["slow"] + result.fault_counts["fast"]
            if kernel != model:
                text = f"{where}: {kernel} faults on the kernel, {model} in {preset}"
                tolerated = PVM_TOP_LEVEL if kernel - model == refault else None
                differences.append(Difference(index, "faults", text, tolerated))
        if run.traces is not None:
            differences += _leaf_differences(scenario, index, run.traces[index], leaves, preset)
    return differences


def _gfns(log: list[int] | None) -> str:
    if log is None:
        return "nothing (no harvest)"
    return "[" + ", ".join(f"{gfn:#x}" for gfn in log) + "]"
