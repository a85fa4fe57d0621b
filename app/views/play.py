"""The whole player view: every panel's data for one step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from app.replay import Shown
from app.views.bitmap import BitmapView, bitmap_view
from app.views.counters import KernelStatsView, kernel_stats_view
from app.views.logs import (
    MigrationView,
    PmlView,
    RingView,
    ViolationView,
    migration_view,
    pml_views,
    ring_views,
    violation_views,
)
from app.views.narration import narrate, note_text
from app.views.rmap import RmapSlotView, TlbView, rmap_views, tlb_views
from app.views.shadow import PagingOffView, ShadowView, shadow_view
from app.views.text import Location, bit_changes, change_text, hx
from app.views.trace import TraceView, trace_view
from app.views.tree import TreeBuilder, TreeView, walk_gfn
from engine.ops.registry import describe, op_spec
from engine.simulation import StepResult
from engine.spte import (
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    flag_word,
    level_name,
)

STEP_WINDOW = 4


class StepLine(NamedTuple):
    number: int
    text: str
    current: bool


@dataclass(slots=True)
class PlayView:
    step: int
    total: int
    title: str
    op: str  # the current step (n-1) in short, "" at step 0
    narration: str
    note: str  # the text of a note step, as the preset shown tells it
    next_op: str
    window: list[StepLine]
    tree: TreeView
    bitmaps: list[BitmapView]
    rings: list[RingView] | None  # with the dirty ring only
    rmaps: list[RmapSlotView]
    tlbs: list[TlbView]
    trace: TraceView
    stats: dict[str, int]
    step_counts: list[tuple[str, str, int]]  # (hook name, label, value)
    kernel_stats: KernelStatsView
    violations: list[ViolationView]
    violation_total: int
    step_violations: int
    migration: MigrationView | None
    # For the compare view.
    faults: list[str]
    spte_changes: list[str]
    spte_change_count: int
    dirty_log: list[int] | None
    marked_dirty: list[int]
    pml: list[PmlView] | None = None  # with PML only
    # Under shadow paging: the guest's and the shadow tables, the walk strip, the legend; or, for a guest
    # with paging off, what the page says about it.
    shadow: ShadowView | PagingOffView | None = None


def _fault_lines(result: StepResult | None, shadow: bool = False) -> list[str]:
    """The step's faults, one line each; under shadow paging a fault is a #PF exit for a guest-virtual
    page (its record's `gfn` holds the page number)."""
    if result is None or result.faults is None:
        return []
    lines = []
    for fault in result.faults[:32]:
        path = "fast" if fault.path == "fast" else "slow"
        if fault.fast_result:
            path += f" ({fault.fast_result})"
        level = level_name(fault.level) if fault.level is not None else "unmapped"
        access = "write" if fault.write else "read"
        if shadow:
            lines.append(f"{access} gva {hx(fault.gfn << 12)}: #PF exit → {level}")
            continue
        lines.append(f"{access} {hx(fault.gfn)}: {path} → {level}")
    if len(result.faults) > 32:
        lines.append(f"… {len(result.faults) - 32} more")
    return lines


def _change_lines(tree: TreeBuilder) -> tuple[list[str], int]:
    """The step's spte changes as short lines (the first 24, by level, table and index), and their count."""
    pages = sorted(
        (
            (tree.freed_pages.get(serial) or tree.kvm.active_mmu_pages[serial], entries)
            for serial, entries in tree.changes.items()
        ),
        key=lambda item: (-item[0].level, item[0].gfn, item[0].serial),
    )
    lines: list[str] = []
    count = 0
    for sp, entries in pages:
        count += len(entries)
        for index in sorted(entries)[: max(0, 24 - len(lines))]:
            old, new = entries[index], sp.spt[index]
            line = f"L{sp.level}[{hx(index)}] of table {hx(sp.gfn)}: {hx(old)} → {hx(new)}"
            # The bits it changed, as the tree says them, while it stayed the same kind of entry.
            if old & PT_PRESENT_MASK and new & PT_PRESENT_MASK and not (old ^ new) & PT_PAGE_SIZE_MASK:
                masks = tree.kvm.masks
                changed = bit_changes(flag_word(old, masks), flag_word(new, masks))
                if changed:
                    line += " (" + ", ".join(change_text(*c) for c in changed) + ")"
            lines.append(line)
    if count > len(lines):
        lines.append(f"… {count - len(lines)} more")
    return lines, count


def play_view(
    shown: Shown,
    variant: str | None,
    selected: Location | None,
    *,
    tree_cap: int,
    bitmap_cells: int,
) -> PlayView:
    sim = shown.sim
    kvm = sim.kvm
    scenario = sim.scenario
    total = len(scenario.steps)
    n = shown.n
    result = shown.result
    ops = scenario.steps
    if result is not None:
        narration = narrate(result.op, result, sim)
        op_text = describe(result.op)
        note = note_text(result.op, variant)
    else:
        narration = "Before the first step: no guest access has happened yet, and no spte is present."
        op_text = ""
        note = ""
    next_op = describe(ops[n]) if n < total else ""
    upcoming_note = op_spec(ops[n]).note(ops[n]) if n < total else None
    if upcoming_note is not None:
        next_op = "note: " + " ".join(upcoming_note.text.split())[:80]
    low = max(0, n - 1 - STEP_WINDOW)
    window = [
        StepLine(i, describe(ops[i]), i == n - 1) for i in range(low, min(total, low + 2 * STEP_WINDOW + 1))
    ]
    lost = list(sim.migration.lost or []) if sim.migrated else []
    counts = result.fault_counts if result is not None else {"fast": 0, "slow": 0}
    tree = TreeBuilder(kvm, shown.touched, selected, tree_cap, walk=walk_gfn(result))
    changes, change_count = _change_lines(tree)
    step_counts = [
        ("faults_fast", "fast faults", counts.get("fast", 0)),
        # A paging guest's faults on a shadow MMU are #PF exits, none of them fast.
        ("faults_slow", "#PF exits" if kvm.shadow else "slow faults", counts.get("slow", 0)),
        ("tlb_flushes", "TLB flushes", result.tlb_flushes if result else 0),
        ("marked_dirty", "pages marked dirty", len(result.marked_dirty) if result else 0),
        ("spte_writes", "sptes changed", change_count),
    ]
    return PlayView(
        step=n,
        total=total,
        title=scenario.title,
        op=op_text,
        narration=narration,
        note=note,
        next_op=next_op,
        window=window,
        tree=tree.build(),
        bitmaps=[bitmap_view(sim, slot, bitmap_cells, lost) for slot in kvm.memslots],
        rings=ring_views(sim),
        pml=pml_views(sim),
        rmaps=rmap_views(kvm),
        tlbs=tlb_views(kvm),
        trace=trace_view(shown, variant),
        stats=kvm.stats(),
        step_counts=step_counts,
        kernel_stats=kernel_stats_view(kvm),
        violations=violation_views(sim.violations, n - 1 if n else None),
        violation_total=len(sim.violations),
        step_violations=len(result.violations) if result else 0,
        migration=migration_view(sim),
        faults=_fault_lines(result, kvm.shadow),
        spte_changes=changes,
        spte_change_count=change_count,
        dirty_log=list(result.dirty_log) if result is not None and result.dirty_log is not None else None,
        marked_dirty=list(result.marked_dirty) if result else [],
        shadow=shadow_view(shown, sim.policy),
    )
