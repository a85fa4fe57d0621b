"""The kernel's own page tables on `/real`, after a chosen step, beside the model's leaves for the same gfns.

Built from a live result's traced steps (`steps[].live.sptes_set`, `tables_created`, `tables_zapped`),
replayed through `live.kernel_tables.KernelTables` up to the step: each table the kernel set leaves in,
by its host physical address, with the leaves it holds (gfn, level, value, the named bits), the ones set
in the step marked. Beside each leaf, the leaf a preset's engine run holds for the same gfn after the same
step, and what differs: nothing mapped, another level, W or D. That comparison is a check only when the
preset models the host's MMU (`live.host_preset`); otherwise it is shown as the contrast of two MMUs.

Bounded like every panel: at most MAX_TABLES tables and MAX_LEAVES leaves each are drawn, the rest
counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from engine.policy import Policy
from engine.scenario import Scenario
from engine.scenario.cost import MAX_GFN_END
from engine.shadow_page import KvmMmuPage, kvm_mmu_page_get_gfn
from engine.simulation import Simulation, StepResult
from engine.spte import (
    FLAG_BITS,
    flag_word,
    is_dirty_spte,
    is_last_spte,
    is_shadow_present_pte,
    is_writable_pte,
    level_name,
    pages_per_hpage,
)
from engine.tdp_iter import for_each_tdp_pte, walk_spte
from live.kernel_tables import DIRTY, WRITABLE, KernelTables, spte_bits
from live.tracefs import TraceStep

# The preset set beside the kernel's tables where none models the host's MMU: today's TDP MMU, as contrast.
CONTRAST_PRESET = "modern"

MAX_TABLES = 24
MAX_LEAVES = 48


@dataclass(frozen=True, slots=True)
class ModelLeaf:
    level: int
    writable: bool
    dirty: bool


@dataclass(frozen=True, slots=True)
class LeafRow:
    """One leaf of the kernel's, and how the model's leaf for its gfn compares."""

    gfn: int
    index: int
    level: int
    value: int
    bits: list[tuple[str, bool]]
    writable: bool
    new: bool  # set during the step shown
    own: bool  # a page of the live VM's own (code, tables), in no scenario slot
    differs: str  # what the model's leaf has otherwise, "" when the same or not compared

    @property
    def size(self) -> str:
        return level_name(self.level)


@dataclass(frozen=True, slots=True)
class TableBox:
    address: int
    level: int
    leaves: list[LeafRow]
    more: int  # leaves not drawn
    absent: int = 0  # the preset's leaves the kernel has no leaf for, folded into one line
    absent_span: tuple[int, int] = (0, 0)  # their first and last gfn


@dataclass(frozen=True, slots=True)
class KernelTreeView:
    step: int  # 1-based: the tables after the op #step
    total: int
    tables: list[TableBox]
    more_tables: int
    per_level: dict[int, int]
    model: str | None  # the preset compared with, if any
    checked: bool  # the preset models the host's MMU: a difference is a disagreement
    differing: int
    faults: tuple[int, int | None]  # the step's faults: the kernel's (pf_fixed), the model's
    model_tables: list[TableBox]  # the preset's own tables after the same step, drawn alike
    model_truncated: bool  # the preset has more tables than are drawn
    model_only: int  # the preset's leaves the kernel has no leaf for (at that gfn and level)

    @property
    def faults_differ(self) -> bool:
        return self.faults[1] is not None and self.faults[0] != self.faults[1]


def _model_tables(sim: Simulation, kernel: set[tuple[int, int]]) -> tuple[list[TableBox], bool, int]:
    """The preset's leaves after the step, by table: those the kernel also has (the same gfn and level)
    drawn one by one, the others folded into one line per table, as alike runs are in the player. Returns
    (boxes, whether tables were left undrawn, leaves the kernel lacks in the tables drawn); the walk stops
    at the first table past the drawing's cap."""
    kvm = sim.kvm
    shown: dict[int, list[LeafRow]] = {}
    hidden: dict[int, int] = {}
    absent: dict[int, list[int]] = {}
    levels: dict[int, int] = {}
    truncated = False
    for it in _model_entries(sim):
        spte = it.old_spte
        if not is_last_spte(spte, it.level):
            continue
        address = it.sp.pfn << 12
        if address not in shown:
            if len(shown) == MAX_TABLES:
                truncated = True
                break
            shown[address], hidden[address], absent[address] = [], 0, []
            levels[address] = it.level
        if (it.gfn, it.level) not in kernel:
            absent[address].append(it.gfn)
        elif len(shown[address]) < MAX_LEAVES:
            word = flag_word(spte, kvm.masks)
            shown[address].append(
                LeafRow(
                    gfn=it.gfn,
                    index=it.entry,
                    level=it.level,
                    value=spte,
                    bits=[(name, bool(word & bit)) for name, bit in FLAG_BITS],
                    writable=is_writable_pte(spte),
                    new=False,
                    own=False,
                    differs="",
                )
            )
        else:
            hidden[address] += 1
    boxes = [
        TableBox(
            address,
            levels[address],
            rows,
            hidden[address],
            len(absent[address]),
            (min(absent[address]), max(absent[address])) if absent[address] else (0, 0),
        )
        for address, rows in shown.items()
    ]
    return boxes, truncated, sum(len(gfns) for gfns in absent.values())


def preset_state(scenario: Scenario, policy: Policy, step: int) -> tuple[Simulation, StepResult | None]:
    """A preset's state after `step` steps and the last step's result, from a run of its own (no trace
    kept): for a page that runs outside the room's turns and so leaves the shared run cache alone."""
    sim = Simulation(scenario, policy, detail="summary")
    last = None
    for _ in range(step):
        last = sim.step()
    return sim, last


class _Entry(NamedTuple):
    """A present entry of the model's tables, as the TDP walker hands it out."""

    sp: KvmMmuPage
    entry: int
    gfn: int
    level: int
    old_spte: int


def _model_entries(sim: Simulation) -> Iterator[_Entry]:
    """The model's present entries: the walk from the VM's root under TDP; under shadow paging, where
    each vCPU has roots of its own and a gfn is the guest's, every shadow page's, by table address."""
    kvm = sim.kvm
    if not kvm.shadow:
        for it in for_each_tdp_pte(kvm, kvm.root, 0, MAX_GFN_END):
            yield _Entry(it.sp, it.index, it.gfn, it.level, it.old_spte)
        return
    for sp in sorted(kvm.active_mmu_pages.values(), key=lambda page: page.pfn):
        for index, spte in enumerate(sp.spt):
            if is_shadow_present_pte(spte):
                yield _Entry(sp, index, kvm_mmu_page_get_gfn(sp, index), sp.level, spte)


def _model_leaf(sim: Simulation, gfn: int) -> ModelLeaf | None:
    if sim.kvm.shadow:
        # The lowest present leaf of any shadow page that maps the gfn (several may: aliases, roots).
        leaves = [
            entry
            for entry in _model_entries(sim)
            if is_last_spte(entry.old_spte, entry.level)
            and entry.gfn <= gfn < entry.gfn + pages_per_hpage(entry.level)
        ]
        if not leaves:
            return None
        best = min(leaves, key=lambda entry: entry.level).old_spte
        level = min(entry.level for entry in leaves)
        return ModelLeaf(level, is_writable_pte(best), is_dirty_spte(best, sim.kvm.masks))
    found = walk_spte(sim.kvm, gfn)
    if found is None:
        return None
    sp, _, spte = found
    return ModelLeaf(sp.level, is_writable_pte(spte), is_dirty_spte(spte, sim.kvm.masks))


def _difference(leaf_level: int, value: int, host: str, model: ModelLeaf | None) -> str:
    if model is None:
        return "the model maps nothing here"
    if model.level != leaf_level:
        return f"the model maps it with a {level_name(model.level)} leaf"
    if bool(value & WRITABLE) != model.writable:
        return f"W: the kernel's {int(bool(value & WRITABLE))}, the model's {int(model.writable)}"
    if bool(value & DIRTY[host]) != model.dirty and host == "tdp":
        return f"D: the kernel's {int(bool(value & DIRTY[host]))}, the model's {int(model.dirty)}"
    return ""


def kernel_tree_view(
    result: Mapping[str, Any],
    scenario: Scenario,
    step: int,
    model: tuple[str, Simulation, StepResult | None] | None,
) -> KernelTreeView | None:
    """The kernel's tables after op #`step` (1-based), or None when the run was not traced. `model`: the
    preset's name, its state after the same step and that step's result (a run cache's cursor in the
    player, `Store.read_state`; a run of its own on /real, `preset_state`), set beside them."""
    live = result["live"]
    if not live.get("traced"):
        return None
    steps: Sequence[Mapping[str, Any]] = result["steps"]
    host: Literal["tdp", "shadow"] = "tdp" if live["host_mmu"] == "tdp" else "shadow"
    tables = KernelTables()
    for entry in steps[:step]:
        tables.apply(TraceStep.from_json(entry["live"]))
    fresh = {(s["table"], s["index"]) for s in steps[step - 1]["live"]["sptes_set"]} if step else set()
    sim: Simulation | None = None
    model_faults: int | None = None
    if model is not None:
        _, sim, last = model
        if last is not None:
            model_faults = last.fault_counts["fast"] + last.fault_counts["slow"]
    slots = [(slot.base_gfn, slot.end_gfn) for slot in scenario.memslots]
    boxes: list[TableBox] = []
    differing = 0
    ordered = [(address, leaves) for address, leaves in sorted(tables.tables.items()) if leaves]
    for address, leaves in ordered[:MAX_TABLES]:
        rows: list[LeafRow] = []
        for index in sorted(leaves)[:MAX_LEAVES]:
            leaf = leaves[index]
            own = not any(first <= leaf.gfn < end for first, end in slots)
            differs = ""
            if sim is not None and not own:
                differs = _difference(leaf.level, leaf.spte, host, _model_leaf(sim, leaf.gfn))
                differing += bool(differs)
            rows.append(
                LeafRow(
                    gfn=leaf.gfn,
                    index=index,
                    level=leaf.level,
                    value=leaf.spte,
                    bits=spte_bits(leaf.spte, host),
                    writable=bool(leaf.spte & WRITABLE),
                    new=(f"{address:#x}", index) in fresh,
                    own=own,
                    differs=differs,
                )
            )
        level = min(leaf.level for leaf in leaves.values())
        boxes.append(TableBox(address, level, rows, max(0, len(leaves) - MAX_LEAVES)))
    kernel_faults = (
        sum(c.get("pf_fixed", 0) for c in steps[step - 1]["live"]["stats"]["vcpus"].values()) if step else 0
    )
    kernel_leaves = {(leaf.gfn, leaf.level) for leaves in tables.tables.values() for leaf in leaves.values()}
    model_boxes, truncated, model_only = _model_tables(sim, kernel_leaves) if sim else ([], False, 0)
    return KernelTreeView(
        model_tables=model_boxes,
        model_truncated=truncated,
        model_only=model_only,
        step=step,
        total=len(steps),
        tables=boxes,
        more_tables=max(0, len(ordered) - MAX_TABLES),
        per_level=tables.leaves_per_level(),
        model=model[0] if model is not None else None,
        checked=model is not None and live.get("host_preset") == model[0],
        differing=differing,
        faults=(kernel_faults, model_faults),
    )
