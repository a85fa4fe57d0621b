"""Describing steps: what a step did in a sentence (the sentence its op's `tell` facet names; the op in a
few words is the op table's `describe`), a note as the preset on screen tells it, and the lesson's own
words before the first step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from app.views.shadow_walk import shadow_outcome
from app.views.text import gfn_list, hx, plural
from engine.ops.base import Tell
from engine.ops.registry import Step, describe, op_spec
from engine.policy import Policy
from engine.simulation import Simulation, StepResult


def note_text(step: Step, variant: str | None) -> str:
    """The text of a note step as `variant` tells it: the preset's own (`by_preset`) if the note has one,
    else `text`; "" for any other op. `variant` is None under a what-if policy, which no preset's text
    describes, so it reads the note every preset shares."""
    note = op_spec(step).note(step)
    return note.text_for(variant) if note is not None else ""


# A paragraph of the description that says what to watch ("What to watch: …", "Watch step 5 …").
_WATCH = ("what to watch", "watch ")


def lesson_text(description: str, steps: Sequence[Step]) -> str:
    """The lesson in its own words, for the narration panel before the first step (Markdown): the
    description's first paragraph, and the paragraph saying what to watch; without a description, the
    first note. Shown where the eye starts, so a visitor reads what the lesson is before stepping."""
    paragraphs = [p.strip() for p in description.split("\n\n") if p.strip()]
    if paragraphs:
        watch = [p for p in paragraphs[1:] if p.lower().startswith(_WATCH)]
        return "\n\n".join(paragraphs[:1] + watch[:1])
    first = next((note for step in steps if (note := op_spec(step).note(step)) is not None), None)
    return first.text if first is not None else ""


def _enabling_text(sim: Simulation) -> str:
    """What switching logging on does to the slot's sptes under the run's policy (kvm_mmu_slot_apply_flags
    in later kernels, kvm_mmu_slot_remove_write_access in 3.x): the rest of the step's sentence. With PML
    in use (it needs EPT A/D bits) the 4K sptes lose D instead of W."""
    policy = sim.policy
    if policy.dirty_log_mode == "initially_set":
        return " with every bit already set: no spte is touched until KVM_CLEAR_DIRTY_LOG"
    small = "every 4K spte loses D (PML logs the next store to it)" if sim.kvm.cpu_dirty_log_size else ""
    if policy.eager_split:
        if small:
            return f": every huge page is split into 4K sptes, and {small}"
        return ": every huge page is split into 4K sptes, and every spte loses W"
    if policy.wp_large == "zap":
        return f": its large sptes are zapped, and {small or 'every 4K spte loses W'}"
    if small:
        return f": large sptes lose W, staying mapped read-only, and {small}"
    return ": every spte loses W, large ones staying mapped read-only"


def _disabling_text(policy: Policy) -> str:
    """What switching logging off does: 3.x only frees the bitmap; later kernels zap the tables a huge
    page could replace (kvm_mmu_zap_collapsible_sptes), so the next fault maps huge again."""
    if policy.recover_on_disable:
        return (
            ": the tables a huge page could replace are zapped, so the next fault there maps a huge page"
            " again"
        )
    return "; the sptes stay as they are"


def _access(step: Step, result: StepResult, sim: Simulation) -> str:
    access = op_spec(step).access(step)
    assert access is not None, "told as an access, it makes some"
    counts = result.fault_counts
    fast, slow = counts.get("fast", 0), counts.get("slow", 0)
    verb = "writes" if access.write else "reads"
    where = f"gfn {hx(access.gfn)}" if access.gva is None else f"gva {hx(access.gva)}"
    target = where if access.count == 1 else f"{access.count} pages from {where}"
    if sim.kvm.shadow:
        return _shadow_exits(f"vCPU {access.vcpu} {verb} {target}", result)
    return _with_faults(f"vCPU {access.vcpu} {verb} {target}", fast, slow)


# What the accesses of a step came to under shadow paging (app.views.shadow_walk.shadow_outcome), in words.
_SHADOW_ENDS = {
    "fixed": "KVM fixed the shadow tables",
    "emulated": "the page is a write-protected guest table, so KVM emulated the store",
    "mmio": "the address leaves every memslot, so KVM emulated it as MMIO",
    "guest_pf": "the guest's own walk fails, so KVM injected the #PF into the guest",
    "livelock": "faults without progress: the guest would hang",
}


def _shadow_exits(head: str, result: StepResult) -> str:
    """A paging guest's accesses: its faults are #PF exits (there is no fast path), and what KVM did
    with them when the step was traced."""
    exits = result.fault_counts.get("slow", 0)
    outcome = shadow_outcome(result)
    if not exits and outcome == "none":
        return f"{head}: no exit, the TLB or the shadow tables already allow it"
    text = f"{head}: {plural(exits, '#PF exit')}" if exits else head
    end = _SHADOW_ENDS.get(outcome)
    if end is not None and result.events is not None:
        text += f", {end}" if exits else f": {end}"
    return text


def _with_faults(head: str, fast: int, slow: int) -> str:
    if not (fast or slow):
        return f"{head}: no exit, the mapping already allows it"
    faults = []
    if slow:
        faults.append(plural(slow, "slow fault"))
    if fast:
        faults.append(plural(fast, "fast fault"))
    return f"{head}: {' and '.join(faults)}"


def _guest_paging(step: Step, result: StepResult, sim: Simulation) -> str:
    """A guest PTE store (through the shadow tables, faulting where its table is write-protected),
    INVLPG, or MOV CR3 (which syncs the unsync pages under the new root)."""
    if sim.kvm.shadow:
        return _shadow_exits(f"The guest runs {describe(step)}", result)
    counts = result.fault_counts
    return _with_faults(f"The guest runs {describe(step)}", counts.get("fast", 0), counts.get("slow", 0))


def _get_end(step: Step, result: StepResult, sim: Simulation) -> str:
    late = sim.policy.flush_after_unlock
    return (
        f"KVM_GET_DIRTY_LOG on slot {op_spec(step).slot(step)} drops mmu_lock"
        + (", flushes the TLBs" if late else " (it flushed under the lock)")
        + " and returns"
    )


def _logging_on(step: Step, result: StepResult, sim: Simulation) -> str:
    return f"Dirty logging is switched on for slot {op_spec(step).slot(step)}{_enabling_text(sim)}"


def _logging_off(step: Step, result: StepResult, sim: Simulation) -> str:
    return f"Dirty logging is switched off for slot {op_spec(step).slot(step)}{_disabling_text(sim.policy)}"


def _get(step: Step, result: StepResult, sim: Simulation) -> str:
    slot = op_spec(step).slot(step)
    if sim.policy.dirty_log_mode != "bitmap":
        return (
            f"KVM_GET_DIRTY_LOG on slot {slot} copies {gfn_list(result.dirty_log or [])}:"
            " with manual protection nothing is cleared or re-protected until KVM_CLEAR_DIRTY_LOG"
        )
    return (
        f"KVM_GET_DIRTY_LOG on slot {slot} returns {gfn_list(result.dirty_log or [])},"
        " clearing those bits and re-protecting their pages"
    )


def _clear(step: Step, result: StepResult, sim: Simulation) -> str:
    spec = op_spec(step)
    first, num = spec.pages(step) or (0, 0)
    return (
        f"KVM_CLEAR_DIRTY_LOG on slot {spec.slot(step)}, pages {hx(first)}+{num}: the bits that were set"
        " are cleared and their pages re-protected"
        + (
            ", after the huge pages holding the range are split and write-protected"
            if sim.policy.dirty_log_mode == "initially_set"
            else ""
        )
    )


def _ring(step: Step, result: StepResult, sim: Simulation) -> str:
    return (
        f"The dirty rings are harvested ({gfn_list(result.dirty_log or [])}) and reset:"
        " those pages are re-protected"
    )


def _flush(step: Step, result: StepResult, sim: Simulation) -> str:
    return "Every vCPU's TLB is flushed"


def _zap(step: Step, result: StepResult, sim: Simulation) -> str:
    return "Every spte is zapped, as on a memslot change"


def _migration_start(step: Step, result: StepResult, sim: Simulation) -> str:
    return f"Migration starts: dirty logging on for every slot{_enabling_text(sim)}; every page copied once"


def _migration_round(step: Step, result: StepResult, sim: Simulation) -> str:
    return f"Pre-copy round: the dirty log returns {gfn_list(result.dirty_log or [])}, copied again"


def _migration_end(step: Step, result: StepResult, sim: Simulation) -> str:
    lost = sim.migration.lost or []
    verdict = f"{plural(len(lost), 'page')} LOST: {gfn_list(lost)}" if lost else "no page lost"
    text = f"Stop-and-copy: the last round returns {gfn_list(result.dirty_log or [])}; {verdict}"
    if sim.policy.recover_on_disable:
        text += f"; dirty logging is switched off{_disabling_text(sim.policy)}"
    return text


def _note(step: Step, result: StepResult, sim: Simulation) -> str:
    return "A note of the lesson: nothing runs, nothing changes"


# The sentence of each op's `tell` facet (engine/ops); tests/test_op_table.py checks every kind has one.
TELLERS: dict[Tell, Callable[[Step, StepResult, Simulation], str]] = {
    Tell.ACCESS: _access,
    Tell.LOGGING_ON: _logging_on,
    Tell.LOGGING_OFF: _logging_off,
    Tell.GET: _get,
    Tell.CLEAR: _clear,
    Tell.RING: _ring,
    Tell.FLUSH: _flush,
    Tell.ZAP: _zap,
    Tell.MIGRATION_START: _migration_start,
    Tell.MIGRATION_ROUND: _migration_round,
    Tell.MIGRATION_END: _migration_end,
    Tell.NOTE: _note,
    Tell.GUEST_PAGING: _guest_paging,
    Tell.GET_END: _get_end,
}


def narrate(step: Step, result: StepResult, sim: Simulation) -> str:
    """One line saying what the step did, in words: the op's own sentence (its `tell` facet), then what
    every step may add (pages marked dirty, TLB flushes, violations). A note's text is shown beside, once.
    A dirty-log ioctl the mode refuses says so instead of what it would have done."""
    spec = op_spec(step)
    if spec.note(step) is not None:
        return _note(step, result, sim) + "."
    if result.error is not None and spec.tell not in (Tell.LOGGING_ON, Tell.LOGGING_OFF, Tell.ACCESS):
        parts = [f"{describe(step)} fails: {result.error}"]
    else:
        parts = [TELLERS[spec.tell](step, result, sim)]
    if result.marked_dirty and spec.harvest is None:
        parts.append(f"marked dirty: {gfn_list(result.marked_dirty)}")
    if result.tlb_flushes:
        parts.append(plural(result.tlb_flushes, "TLB flush", "TLB flushes"))
    if result.violations:
        names = sorted({v.invariant for v in result.violations})
        parts.append(f"⚠ {plural(len(result.violations), 'violation')}: {', '.join(names)}")
    return "; ".join(parts) + "."
