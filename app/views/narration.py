"""Describing steps: an op in a few words, what a step did in a sentence, a note as the preset on screen
tells it, and the lesson's own words before the first step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.views.text import gfn_list, hx, plural
from engine.policy import Policy
from engine.scenario import NoteStep, Step
from engine.simulation import Simulation, StepResult


def describe_op(op: Mapping[str, object]) -> str:
    """A step's op as one short line: `write gfn 0x250`, `read gfn 0x200 ×512`, `get_dirty_log slot 1`."""
    name = str(op.get("op"))
    if name == "note":
        return "note"
    parts = [name]
    gfn = op.get("gfn")
    if isinstance(gfn, int):
        parts.append(f"gfn {gfn:#x}")
        count, stride, vcpu = op.get("count", 1), op.get("stride", 1), op.get("vcpu", 0)
        if count != 1:
            parts.append(f"×{count}")
            if stride != 1:
                parts.append(f"stride {stride}")
        if vcpu != 0:
            parts.append(f"vCPU {vcpu}")
    slot = op.get("slot")
    if isinstance(slot, int):
        parts.append(f"slot {slot}")
    first, num = op.get("first"), op.get("num")
    if isinstance(first, int) and isinstance(num, int):
        parts.append(f"pages {first:#x}+{num}")
    return " ".join(parts)


def note_text(op: Mapping[str, object], variant: str | None) -> str:
    """The text of a note step as `variant` tells it: the preset's own (`by_preset`) if the note has one,
    else `text`; "" for any other op. `variant` is None under a what-if policy, which no preset's text
    describes, so it reads the note every preset shares."""
    if op.get("op") != "note":
        return ""
    by_preset = op.get("by_preset")
    if variant is not None and isinstance(by_preset, Mapping):
        own = by_preset.get(variant)
        if isinstance(own, str):
            return own
    return str(op.get("text", ""))


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
    first = next((step for step in steps if isinstance(step, NoteStep)), None)
    return first.text if first is not None else ""


# Ops whose marked_dirty would repeat what their dirty_log already says.
_HARVESTING_OPS = ("get_dirty_log", "reset_dirty_ring", "migrate_round", "migrate_end")


def _int_field(op: Mapping[str, object], name: str) -> int:
    value = op.get(name)
    return value if isinstance(value, int) else 0


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


def narrate(op: Mapping[str, object], result: StepResult, sim: Simulation) -> str:
    """One line saying what the step did, in words."""
    name = op.get("op")
    if name == "note":  # its text is shown beside, once
        return "A note of the lesson: nothing runs, nothing changes."
    counts = result.fault_counts
    fast, slow = counts.get("fast", 0), counts.get("slow", 0)
    parts: list[str] = []
    if name in ("read", "write"):
        verb = "writes" if name == "write" else "reads"
        count = op.get("count", 1)
        target = (
            f"gfn {hx(int(str(op.get('gfn'))))}"
            if count == 1
            else f"{count} pages from gfn {hx(int(str(op.get('gfn'))))}"
        )
        head = f"vCPU {op.get('vcpu', 0)} {verb} {target}"
        if fast or slow:
            faults = []
            if slow:
                faults.append(plural(slow, "slow fault"))
            if fast:
                faults.append(plural(fast, "fast fault"))
            parts.append(f"{head}: {' and '.join(faults)}")
        else:
            parts.append(f"{head}: no exit, the mapping already allows it")
    elif name == "enable_dirty_log":
        parts.append(f"Dirty logging is switched on for slot {op.get('slot')}{_enabling_text(sim)}")
    elif name == "disable_dirty_log":
        parts.append(f"Dirty logging is switched off for slot {op.get('slot')}{_disabling_text(sim.policy)}")
    elif result.error is not None:
        parts.append(f"{describe_op(op)} fails: {result.error}")
    elif name == "get_dirty_log" and sim.policy.dirty_log_mode != "bitmap":
        parts.append(
            f"KVM_GET_DIRTY_LOG on slot {op.get('slot')} copies {gfn_list(result.dirty_log or [])}:"
            " with manual protection nothing is cleared or re-protected until KVM_CLEAR_DIRTY_LOG"
        )
    elif name == "get_dirty_log":
        parts.append(
            f"KVM_GET_DIRTY_LOG on slot {op.get('slot')} returns {gfn_list(result.dirty_log or [])},"
            " clearing those bits and re-protecting their pages"
        )
    elif name == "clear_dirty_log":
        parts.append(
            f"KVM_CLEAR_DIRTY_LOG on slot {op.get('slot')}, pages {hx(_int_field(op, 'first'))}"
            f"+{op.get('num')}: the bits that were set are cleared and their pages re-protected"
            + (
                ", after the huge pages holding the range are split and write-protected"
                if sim.policy.dirty_log_mode == "initially_set"
                else ""
            )
        )
    elif name == "reset_dirty_ring":
        parts.append(
            f"The dirty rings are harvested ({gfn_list(result.dirty_log or [])}) and reset:"
            " those pages are re-protected"
        )
    elif name == "flush_tlb":
        parts.append("Every vCPU's TLB is flushed")
    elif name == "zap_all":
        parts.append("Every spte is zapped, as on a memslot change")
    elif name == "migrate_begin":
        parts.append(
            f"Migration starts: dirty logging on for every slot{_enabling_text(sim)}; every page copied once"
        )
    elif name == "migrate_round":
        parts.append(
            f"Pre-copy round: the dirty log returns {gfn_list(result.dirty_log or [])}, copied again"
        )
    elif name == "migrate_end":
        lost = sim.migration.lost or []
        verdict = f"{plural(len(lost), 'page')} LOST: {gfn_list(lost)}" if lost else "no page lost"
        parts.append(f"Stop-and-copy: the last round returns {gfn_list(result.dirty_log or [])}; {verdict}")
        if sim.policy.recover_on_disable:
            parts.append(f"dirty logging is switched off{_disabling_text(sim.policy)}")
    else:
        parts.append(describe_op(op))
    if result.marked_dirty and name not in _HARVESTING_OPS:
        parts.append(f"marked dirty: {gfn_list(result.marked_dirty)}")
    if result.tlb_flushes:
        parts.append(plural(result.tlb_flushes, "TLB flush", "TLB flushes"))
    if result.violations:
        names = sorted({v.invariant for v in result.violations})
        parts.append(f"⚠ {plural(len(result.violations), 'violation')}: {', '.join(names)}")
    return "; ".join(parts) + "."
