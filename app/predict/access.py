"""Guest accesses: "will it fault, and how?" and "which bits change?"."""

from __future__ import annotations

from collections.abc import Mapping

from app.predict.base import (
    BITS,
    FAULT,
    Choice,
    Leaf,
    Question,
    _ensure,
    _hx,
    _is_leaf,
    _join,
    _logged_mark,
    _pick,
    _said_of,
    _sentences,
    leaf_before,
)
from app.predict.shadow import shadow_fault_question
from app.replay import Shown
from engine.kvm import Kvm
from engine.ops.base import Access
from engine.ops.registry import op_spec
from engine.simulation import StepResult
from engine.spte import FLAG_BITS, SpteMasks, flag_word, is_dirty_spte, is_writable_pte, spte_to_pfn

_WRITE_FAULT = (
    Choice("none", "No exit: the store goes through"),
    Choice("fast", "Fast fault: fixed locklessly"),
    Choice("bail", "The fast path gives up, then a slow fault"),
    Choice("slow", "Slow fault: the fast path is not even tried"),
)
_READ_FAULT = (
    Choice("none", "No exit: the load goes through"),
    Choice("fast", "Fast fault: fixed locklessly"),
    Choice("slow", "Slow fault: the slow path maps the page"),
)
_MANY_FAULT = (
    Choice("none", "No exit at all"),
    Choice("fast", "Fast faults only"),
    Choice("slow", "Slow faults only"),
    Choice("both", "Both fast and slow faults"),
)
# What an outcome no option names is called (see _ensure).
_LEADS = {
    "none": "No exit",
    "fast": "A fast fault",
    "bail": "The fast path gives up, then a slow fault",
    "slow": "A slow fault",
    "both": "Both fast and slow faults",
}
# Which events tell the story of each outcome.
_STORY = {
    "none": ("ept_ad_update", "guest_access"),
    "fast": ("fast_page_fault",),  # its sentence already says which page is marked dirty
    "bail": ("fast_page_fault", "drop_large_spte", "__direct_map", "mark_page_dirty"),
    "slow": ("tdp_page_fault", "__direct_map", "mark_page_dirty"),
}


def single_outcome(result: StepResult) -> str:
    """How one access was satisfied: "none" (no exit), "fast" (the fast path fixed it), "bail" (the fast
    path was tried and gave up, the slow path mapped it) or "slow" (the fast path was not even tried).
    From the fault rows when the step was traced, else from the counts (which cannot tell "bail")."""
    faults = result.faults
    if faults is None:
        counts = result.fault_counts
        if counts.get("slow", 0):
            return "slow"
        return "fast" if counts.get("fast", 0) else "none"
    if not faults:
        return "none"
    slow = [fault for fault in faults if fault.path != "fast"]
    if not slow:
        return "fast"
    return "bail" if any(fault.fast_tried for fault in slow) else "slow"


def many_outcome(counts: Mapping[str, int]) -> str:
    fast, slow = counts.get("fast", 0), counts.get("slow", 0)
    if fast and slow:
        return "both"
    if slow:
        return "slow"
    return "fast" if fast else "none"


def _access(result: StepResult) -> Access:
    """The step's guest accesses: asked about only for an op whose `ask` is FAULT, which makes some."""
    access = op_spec(result.op).access(result.op)
    assert access is not None, "an op that asks about faults makes guest accesses"
    return access


def fault_question(shown: Shown, result: StepResult) -> Question:
    """Will the access exit to KVM, and which path handles it? The options are fixed by the kind of
    access (a load never takes the fast path, which only fixes writes to present sptes), so they say
    nothing about the answer."""
    access = _access(result)
    write, gfn, count, vcpu = access.write, access.gfn, access.count, access.vcpu
    verb = "writes" if write else "reads"
    said = _sentences(result, shown.sim.kvm.masks)
    if count == 1:
        options = _WRITE_FAULT if write else _READ_FAULT
        correct = single_outcome(result)
        prompt = f"vCPU {vcpu} {verb} gfn {_hx(gfn)}. Will it fault, and which path handles the fault?"
        story = _pick(said, _STORY[correct], _logged_mark)
        explanation = story or _counts_text(result)
        if write and correct == "none":
            explanation = _join(explanation, _unlogged_store(shown, result, gfn))
    else:
        options = _MANY_FAULT
        correct = many_outcome(result.fault_counts)
        stride = access.stride
        how = f", every {stride} pages" if stride != 1 else ""
        prompt = (
            f"vCPU {vcpu} {verb} {count} pages from gfn {_hx(gfn)}{how}. Which faults do these accesses take?"
        )
        explanation = _counts_text(result)
    return Question(
        result.index,
        FAULT,
        prompt,
        _ensure(options, correct, _LEADS.get(correct, correct)),
        correct,
        explanation,
    )


def _counts_text(result: StepResult) -> str:
    fast, slow = result.fault_counts.get("fast", 0), result.fault_counts.get("slow", 0)
    if not fast and not slow:
        return "No access exited to KVM: the sptes (or the TLB) already allowed every one."
    parts = []
    if slow:
        parts.append(f"{slow} slow fault{'s' if slow != 1 else ''}")
    if fast:
        parts.append(f"{fast} fast fault{'s' if fast != 1 else ''}")
    return f"The step took {' and '.join(parts)}."


def _unlogged_store(shown: Shown, result: StepResult, gfn: int) -> str:
    """A store that took no exit into a logged slot: say that the dirty log never hears of it."""
    slot = shown.sim.kvm.gfn_to_memslot(gfn)
    if slot is None or slot.dirty_bitmap is None or gfn in result.marked_dirty:
        return ""
    if slot.test_dirty(gfn):
        return f"gfn {_hx(gfn)}'s dirty bit was already set, so the dirty log will report it anyway."
    return (
        f"Slot {slot.id} is dirty-logged, yet nothing marks gfn {_hx(gfn)} dirty: KVM never sees this"
        " store, and the dirty log will not report it."
    )


def _bits_change(old: int, new: int, level: int, masks: SpteMasks) -> str:
    """The answer key of an spte's change: "none", "gone" (removed or replaced by something else), or
    the flags it gained and lost, "set-ad", "clear-w", "set-d-clear-w"."""
    if old == new:
        return "none"
    if not _is_leaf(new, level) or spte_to_pfn(old) != spte_to_pfn(new):
        return "gone"
    old, new = flag_word(old, masks), flag_word(new, masks)
    gained = "".join(name.lower() for name, bit in FLAG_BITS if new & bit and not old & bit)
    lost = "".join(name.lower() for name, bit in FLAG_BITS if old & bit and not new & bit)
    parts = ([f"set-{gained}"] if gained else []) + ([f"clear-{lost}"] if lost else [])
    return "-".join(parts) or "none"


def _change_label(key: str) -> str:
    if key == "none":
        return "None: it stays as it is"
    if key == "gone":
        return "It is replaced: a fault rebuilds it"
    words = []
    for part in key.split("-clear-"):
        if part.startswith("set-"):
            words.append("the CPU sets " + " and ".join(part.removeprefix("set-").upper()))
        else:
            words.append("it loses " + " and ".join(part.removeprefix("clear-").upper()))
    text = "; ".join(words)
    return text[0].upper() + text[1:]


def _bits_options(write: bool) -> list[Choice]:
    keys = ["none", "set-d", "set-ad", "gone"] if write else ["none", "set-a", "set-ad", "gone"]
    return [Choice(key, _change_label(key)) for key in keys]


def asks_bits(kvm: Kvm, leaf: Leaf | None, write: bool) -> bool:
    """Ask which bits change when the access cannot fault and the CPU has an A/D bit to set: a store
    through a writable spte whose D is clear, or a load through one whose A is clear (prefetched)."""
    if leaf is None:
        return False
    masks = kvm.masks
    if write:
        return bool(masks.dirty_mask) and is_writable_pte(leaf.old) and not is_dirty_spte(leaf.old, masks)
    return bool(masks.accessed_mask and not leaf.old & masks.accessed_mask)


def bits_question(result: StepResult, leaf: Leaf) -> Question:
    """Which bits of the spte the access goes through change? A store with no exit still writes the spte:
    the CPU sets D (and A) in it as it walks."""
    access = _access(result)
    write, gfn, vcpu = access.write, access.gfn, access.vcpu
    verb = "writes" if write else "reads"
    correct = _bits_change(leaf.old, leaf.new, leaf.level, leaf.masks)
    prompt = f"vCPU {vcpu} {verb} gfn {_hx(gfn)} through {leaf.describe()}. Which of its bits change?"
    said = _sentences(result, leaf.masks)
    mine = _said_of(said, "ept_ad_update", leaf)
    story = " ".join(item.text for item in mine[:1]) or _pick(said, _STORY[single_outcome(result)])
    explanation = _join(
        f"{leaf.where}: {_hx(leaf.old)} → {_hx(leaf.new)}" + (" (unchanged)." if correct == "none" else "."),
        story,
    )
    options = _ensure(_bits_options(write), correct, _change_label(correct))
    return Question(result.index, BITS, prompt, options, correct, explanation)


def access_question(shown: Shown, result: StepResult) -> Question:
    if shown.sim.kvm.shadow:
        # A paging guest on a shadow MMU: no fast path, and an spte is found by gva, not gfn.
        return shadow_fault_question(shown, result)
    access = _access(result)
    write, gfn, count = access.write, access.gfn, access.count
    if count == 1:
        leaf = leaf_before(shown.sim.kvm, shown.touched, gfn)
        if asks_bits(shown.sim.kvm, leaf, write) and leaf is not None:
            return bits_question(result, leaf)
    return fault_question(shown, result)
