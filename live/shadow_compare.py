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

What is not compared: the values of the leaves beyond level and W (host pfns differ), write protection
and drops between steps (no tracepoint; the counters and later faults show their effects), and the
kernel's own counters the model does not keep.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.policy import make_policy
from engine.scenario import Scenario
from engine.shadow_page import kvm_mmu_page_get_gfn
from engine.simulation import Simulation
from engine.spte import is_last_spte, is_shadow_present_pte, is_writable_pte
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


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing the kernel and the model did differently in one step."""

    step: int
    what: str  # one of COMPARED
    text: str  # the whole difference in words, with both numbers

    def to_json(self) -> dict[str, object]:
        return {"step": self.step, "what": self.what, "text": self.text}


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


def compare_run(scenario: Scenario, run: KernelRun, preset: str = "modern") -> list[Difference]:
    """Every difference between the kernel's run of the scenario and the preset's model, step by step."""
    sim = Simulation(scenario, make_policy(preset), detail="summary")
    differences: list[Difference] = []
    before = sim.kvm.stats()
    kernel_leaves = dict.fromkeys(LEVELS, 0)
    for index, step in enumerate(scenario.steps):
        result = sim.step()
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
                differences.append(
                    Difference(index, name, f"{where}: {name} changed by {kernel} on the kernel, {model} in"
                               f" {preset}")
                )
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
                differences.append(Difference(index, "faults", text))
        if run.traces is not None:
            differences += _leaf_differences(scenario, index, run.traces[index], leaves, preset)
    return differences


def _gfns(log: list[int] | None) -> str:
    if log is None:
        return "nothing (no harvest)"
    return "[" + ", ".join(f"{gfn:#x}" for gfn in log) + "]"
