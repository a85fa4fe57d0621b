"""Predict next: a question about the step about to run, read off the engine's own result of that step.

The player's predict mode asks, before a step is revealed, what it will do, then shows the answer with
the state after it. Nothing here is written per scenario: a question is derived from the `StepResult` of
the step (what `Run.at(n + 1)` returns: fault rows, dirty log, violations, trace events) and the spte
values the step replaced (`Shown.touched`), so the right answer is whatever the model does under the
page's preset and switches — a what-if changes the answers with it.

What a question asks about is chosen from the op and from the state *before* the step, which the learner
sees on the page, never from the outcome, so the prompt gives nothing away. The one exception is the
dirty-log question: it prefers a page that was written but will not be reported, because that silent
loss is what the lazy-buggy preset is about; its prompt reads the same whatever the answer.

The kinds follow the op: an access asks which path a fault takes (or which bits the CPU sets); enabling
logging asks what becomes of a mapping (zapped, write-protected, split into 4K sptes, or left alone when the
bitmap starts all set), and disabling it what becomes of the table logging left where a huge page was (left,
zapped, or replaced in place by a huge leaf, as 6.13 and later do); a harvest (GET_DIRTY_LOG, a round, the
dirty ring's reset) asks whether a written page is reported; KVM_CLEAR_DIRTY_LOG asks whether a page is
write-protected again; the end of a migration asks for the verdict. An ioctl the VM's dirty-log mode
refuses is asked about as if it ran, and its failure is the answer.

Everything here is a pure function of engine values; the explanations reuse `app.explain`'s sentences for
the trace events that decided the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from app.explain.context import Context
from app.explain.events import explain
from app.explain.meanings import INVARIANT_TEXT
from app.replay import Shown
from engine.kvm import Kvm
from engine.scenario import (
    ClearDirtyLogStep,
    DisableDirtyLogStep,
    EnableDirtyLogStep,
    GetDirtyLogStep,
    MigrateBeginStep,
    MigrateEndStep,
    MigrateRoundStep,
    ResetDirtyRingStep,
    Step,
    WriteStep,
)
from engine.shadow_page import KvmMmuPage
from engine.simulation import StepResult
from engine.spte import (
    FLAG_BITS,
    PT64_BASE_ADDR_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    SpteMasks,
    flag_word,
    level_name,
    pages_per_hpage,
    spte_index,
)
from engine.trace import event_json

# The kinds of question, as the page's `data-question` hook names them.
FAULT, BITS, LOGGING, DIRTY_LOG, CLEAR, VERDICT = "fault", "bits", "logging", "dirty_log", "clear", "verdict"

# Reported pages looked at when choosing which one to ask about: a dirty log can hold a million.
_SCAN_REPORTED = 256
_MAX_SENTENCES = 4


class Choice(NamedTuple):
    key: str  # the URL's `answer=` value: lowercase letters, digits and dashes
    label: str


@dataclass(frozen=True, slots=True)
class Question:
    """One multiple-choice question about step `step` (its index in the scenario)."""

    step: int
    kind: str
    prompt: str
    options: tuple[Choice, ...]
    correct: str
    explanation: str

    def has(self, key: str) -> bool:
        return any(choice.key == key for choice in self.options)

    def label(self, key: str) -> str:
        for choice in self.options:
            if choice.key == key:
                return choice.label
        return key

    @property
    def keys(self) -> list[str]:
        return [choice.key for choice in self.options]


@dataclass(frozen=True, slots=True)
class Feedback:
    """The verdict on an answer: shown above the state after the step it was about."""

    question: Question
    answer: str
    right: bool

    @property
    def answer_label(self) -> str:
        return self.question.label(self.answer)

    @property
    def correct_label(self) -> str:
        return self.question.label(self.question.correct)


def judge(question: Question, answer: str) -> Feedback:
    return Feedback(question, answer, answer == question.correct)


def scored(score: tuple[int, int], feedback: Feedback | None) -> tuple[int, int]:
    """The running score (right, asked) once `feedback`'s answer is counted."""
    right, asked = score
    if feedback is None:
        return score
    return right + feedback.right, asked + 1


# ---------------------------------------------------------------------------------------------------------
# Reading the engine's values


def _hx(value: int) -> str:
    return f"{value:#x}"


def _bits(value: int, masks: SpteMasks) -> str:
    """The eight flags in their fixed order, an unset one as a dot, as the tree draws them."""
    word = flag_word(value, masks)
    return " ".join(name if word & bit else "·" for name, bit in FLAG_BITS)


def _is_leaf(value: int, level: int) -> bool:
    return bool(value & PT_PRESENT_MASK) and (level == 1 or bool(value & PT_PAGE_SIZE_MASK))


@dataclass(frozen=True, slots=True)
class Leaf:
    """An spte as it was before the step, and where it lives."""

    sp: KvmMmuPage
    index: int
    old: int
    masks: SpteMasks

    @property
    def level(self) -> int:
        return self.sp.level

    @property
    def gfn(self) -> int:
        return self.sp.gfn + self.index * pages_per_hpage(self.sp.level)

    @property
    def span(self) -> int:
        return pages_per_hpage(self.sp.level)

    @property
    def new(self) -> int:
        return self.sp.spt[self.index]

    @property
    def where(self) -> str:
        return f"L{self.level}[{_hx(self.index)}]"

    def describe(self) -> str:
        """`L2[0x1], the 2M spte mapping gfns 0x200–0x3ff (R · X PS A D HW MW)`: what the tree shows."""
        if self.span == 1:
            what = f"the 4K spte mapping gfn {_hx(self.gfn)}"
        else:
            last = self.gfn + self.span - 1
            what = f"the {level_name(self.level)} spte mapping gfns {_hx(self.gfn)}–{_hx(last)}"
        return f"{self.where}, {what} ({_bits(self.old, self.masks)})"


def leaf_before(kvm: Kvm, touched: Mapping[tuple[KvmMmuPage, int], int], gfn: int) -> Leaf | None:
    """The leaf that mapped `gfn` before the step: a walk from the root of the state after it, reading
    each entry the step wrote at its old value. An access step never frees a table, so every table the
    old walk passed through still exists."""
    sp: KvmMmuPage | None = kvm.root
    while sp is not None:
        index = spte_index(gfn, sp.level)
        old = touched.get((sp, index), sp.spt[index])
        if not old & PT_PRESENT_MASK:
            return None
        if _is_leaf(old, sp.level):
            return Leaf(sp, index, old, kvm.masks)
        sp = kvm.sp_by_pfn.get((old & PT64_BASE_ADDR_MASK) >> 12)
    return None


class _Said(NamedTuple):
    name: str
    data: dict[str, object]
    text: str


def _sentences(result: StepResult, masks: SpteMasks) -> list[_Said]:
    """Every trace event of the step with the trace panel's sentence for it (one Context for the whole
    step, as the panel uses, so "the gfn the guest wrote" means the same here)."""
    if result.events is None:
        return []
    ctx = Context(masks)
    out = []
    for event in result.events:
        data = event_json(event)
        out.append(_Said(str(data["name"]), data, explain(data, ctx)))
    return out


def _said_of(said: list[_Said], name: str, leaf: Leaf) -> list[_Said]:
    """The step's `name` events about the spte `leaf` names (its table and index)."""
    return [
        item
        for item in said
        if item.name == name
        and item.data.get("level") == leaf.level
        and item.data.get("index") == leaf.index
        and item.data.get("sp_gfn") == leaf.sp.gfn
    ]


def _pick(said: Sequence[_Said], names: Sequence[str], keep: Callable[[_Said], bool] | None = None) -> str:
    """The sentences of the first event of each name in `names`, in the order the step emitted them."""
    seen: set[str] = set()
    texts = []
    for item in said:
        if item.name in names and item.name not in seen and (keep is None or keep(item)):
            seen.add(item.name)
            texts.append(item.text)
    return " ".join(texts[:_MAX_SENTENCES])


def _logged_mark(item: _Said) -> bool:
    return item.name != "mark_page_dirty" or bool(item.data.get("logged"))


def _ensure(options: Sequence[Choice], correct: str, label: str) -> tuple[Choice, ...]:
    """The options, with the right one among them even when the model did something no option names
    (then it replaces the last option, so there are never more than four)."""
    if any(choice.key == correct for choice in options):
        return tuple(options)
    return (*options[:3], Choice(correct, label))


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


# ---------------------------------------------------------------------------------------------------------
# Guest accesses: "will it fault, and how?" and "which bits change?"

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


def _access_words(op: Mapping[str, object]) -> tuple[bool, int, int, int]:
    write = op.get("op") == "write"
    gfn = int(str(op.get("gfn", 0)))
    count = int(str(op.get("count", 1)))
    vcpu = int(str(op.get("vcpu", 0)))
    return write, gfn, count, vcpu


def fault_question(shown: Shown, result: StepResult) -> Question:
    """Will the access exit to KVM, and which path handles it? The options are fixed by the kind of
    access (a load never takes the fast path, which only fixes writes to present sptes), so they say
    nothing about the answer."""
    op = result.op
    write, gfn, count, vcpu = _access_words(op)
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
        stride = int(str(op.get("stride", 1)))
        how = f", every {stride} pages" if stride != 1 else ""
        prompt = (
            f"vCPU {vcpu} {verb} {count} pages from gfn {_hx(gfn)}{how}. Which faults do these accesses take?"
        )
        explanation = _counts_text(result)
    return Question(
        result.index, FAULT, prompt, _ensure(options, correct, _LEADS.get(correct, correct)), correct,
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
    if not _is_leaf(new, level) or (old ^ new) & PT64_BASE_ADDR_MASK:
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
        return bool(masks.dirty_mask and leaf.old & PT_WRITABLE_MASK and not leaf.old & masks.dirty_mask)
    return bool(masks.accessed_mask and not leaf.old & masks.accessed_mask)


def bits_question(result: StepResult, leaf: Leaf) -> Question:
    """Which bits of the spte the access goes through change? A store with no exit still writes the spte:
    the CPU sets D (and A) in it as it walks."""
    write, gfn, _, vcpu = _access_words(result.op)
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
    write, gfn, count, _ = _access_words(result.op)
    if count == 1:
        leaf = leaf_before(shown.sim.kvm, shown.touched, gfn)
        if asks_bits(shown.sim.kvm, leaf, write) and leaf is not None:
            return bits_question(result, leaf)
    return fault_question(shown, result)


# ---------------------------------------------------------------------------------------------------------
# Enabling dirty logging: "what happens to the large spte?"

_LOGGING = (
    Choice("zap", "Zapped: it is removed, and the next touch of its range faults"),
    Choice("wp", "Write-protected: it loses W and stays mapped"),
    Choice("split", "Split: a table of read-only 4K sptes replaces it"),
    Choice("same", "Unchanged"),
)
# A 4K spte has nothing to split into: the same question without that option.
_LOGGING_4K = tuple(choice for choice in _LOGGING if choice.key != "split")


def _leaves_in(kvm: Kvm, touched: Mapping[tuple[KvmMmuPage, int], int], slots: Sequence[int]) -> list[Leaf]:
    """The leaf sptes of `slots` as they were before the step, large ones first, each kind by gfn.

    The large ones are every entry of a level-2+ table (few: one per 2 MiB at most) read at its old
    value; the 4K ones are only those the step wrote, since a 1 GiB slot has a quarter million of them
    (enabling logging writes every writable one, which is what the question is about)."""
    ranges = [(s.base_gfn, s.base_gfn + s.npages) for s in kvm.memslots if s.id in slots]

    def inside(gfn: int) -> bool:
        return any(low <= gfn < high for low, high in ranges)

    large: dict[tuple[int, int], Leaf] = {}
    for sp in kvm.active_mmu_pages.values():
        if sp.level < 2 or sp.invalid:
            continue
        for index, value in enumerate(sp.spt):
            old = touched.get((sp, index), value)
            if old & PT_PRESENT_MASK and old & PT_PAGE_SIZE_MASK:
                leaf = Leaf(sp, index, old, kvm.masks)
                if inside(leaf.gfn):
                    large[(leaf.gfn, -leaf.level)] = leaf
    small = {}
    for (sp, index), old in touched.items():
        if sp.level == 1 and old & PT_PRESENT_MASK and not sp.invalid:
            leaf = Leaf(sp, index, old, kvm.masks)
            if inside(leaf.gfn):
                small[leaf.gfn] = leaf
    return [large[key] for key in sorted(large)] + [small[key] for key in sorted(small)]


def _logging_outcome(leaf: Leaf) -> str:
    """The answer key: "zap" (gone), "split" (a large leaf became a pointer to a table), "wp" (it lost
    W) or "same"."""
    old, new = leaf.old, leaf.new
    if not new & PT_PRESENT_MASK:
        return "zap"
    if leaf.level > 1 and not _is_leaf(new, leaf.level):
        return "split"
    if old & PT_WRITABLE_MASK and not new & PT_WRITABLE_MASK:
        return "wp"
    return "same"


def small_leaves_under(kvm: Kvm, table: int, level: int) -> tuple[int, int]:
    """(present, writable) 4K leaves under the non-leaf spte `table` of a level-`level` table: what a
    split left in its place (a 1G leaf split to 4K is 512 tables of 512)."""
    sp = kvm.sp_by_pfn.get((table & PT64_BASE_ADDR_MASK) >> 12)
    if sp is None:
        return 0, 0
    if sp.level == 1:
        leaves = [value for value in sp.spt if value & PT_PRESENT_MASK]
        return len(leaves), sum(1 for value in leaves if value & PT_WRITABLE_MASK)
    present = writable = 0
    for value in sp.spt:
        if value & PT_PRESENT_MASK and not _is_leaf(value, sp.level):
            below = small_leaves_under(kvm, value, sp.level)
            present += below[0]
            writable += below[1]
    return present, writable


def _split_story(kvm: Kvm, leaf: Leaf, said: list[_Said]) -> str:
    mine = _said_of(said, "tdp_mmu_split_huge_page", leaf)
    story = mine[0].text if mine else _pick(said, ("kvm_mmu_slot_try_split_huge_pages",))
    if not story:  # the step's trace was cut short before the split's events
        story = (
            f"{leaf.where} is split as logging starts (eager page splitting): a table of smaller sptes"
            " with the same permissions replaces it, so every page stays mapped."
        )
    present, writable = small_leaves_under(kvm, leaf.new, leaf.level)
    if not present:
        return story
    read_only = "all of them read-only" if not writable else f"{present - writable} of them read-only"
    return _join(
        story,
        f"Write protection then runs over the new 4K sptes: {present} now map the range, {read_only}, so"
        " the first write to any of its pages is a fast fault on its own 4K spte.",
    )


def _initially_set_story(kvm: Kvm, leaf: Leaf, slots: Sequence[int]) -> str:
    """Under KVM_DIRTY_LOG_INITIALLY_SET nothing is write-protected: say so, from the bitmaps."""
    logged = [s for s in kvm.memslots if s.id in slots and s.dirty_bitmap is not None]
    if not logged or not all(s.all_dirty(s.base_gfn, s.npages) for s in logged):
        return ""
    return (
        "With KVM_DIRTY_LOG_INITIALLY_SET the bitmap starts with every bit set, so no write can be missed"
        f" yet, and no spte is touched: {leaf.where} keeps its bits. Each KVM_CLEAR_DIRTY_LOG"
        " write-protects (and splits) the range it clears."
    )


def logging_question(shown: Shown, result: StepResult, slots: Sequence[int]) -> Question | None:
    """What does turning dirty logging on do to a mapping of the slot? Asked about the first large spte
    (the patch's subject: zapped before it, write-protected after, split by today's kernels), else the
    first 4K leaf. The options depend only on that spte's size, which the page shows."""
    kvm = shown.sim.kvm
    leaves = _leaves_in(kvm, shown.touched, slots)
    if not leaves:
        return None
    leaf = leaves[0]
    correct = _logging_outcome(leaf)
    named = ", ".join(str(s) for s in slots)
    head = (
        "Migration begins: dirty logging is switched on for every slot"
        if result.op.get("op") == "migrate_begin"
        else f"Dirty logging is switched on for slot {named}"
    )
    prompt = f"{head}. What happens to {leaf.describe()}?"
    said = _sentences(result, shown.sim.kvm.masks)
    mine = _said_of(said, "spte_write_protect", leaf)
    if correct == "split":
        story = _split_story(kvm, leaf, said)
    elif mine:
        story = mine[0].text
    elif correct == "same":
        story = _initially_set_story(kvm, leaf, slots) or (
            f"{leaf.where} has no W bit to clear, so write protection leaves it as it is."
        )
    else:
        story = _pick(said, ("kvm_mmu_slot_remove_write_access",))
    change = f"{leaf.where}: {_hx(leaf.old)} → {_hx(leaf.new)}." if correct != "same" else ""
    options = _LOGGING if leaf.level > 1 else _LOGGING_4K
    return Question(result.index, LOGGING, prompt, options, correct, _join(change, story))


# ---------------------------------------------------------------------------------------------------------
# Disabling dirty logging: "what happens to the table logging left behind?"

_RECOVERY = (
    Choice("same", "Nothing: the table and its 4K sptes stay"),
    Choice("zap", "Zapped: the next fault there maps a huge page"),
    Choice("huge", "Replaced at once by a huge leaf"),
)


def _table_before(kvm: Kvm, touched: Mapping[tuple[KvmMmuPage, int], int], slot: int) -> Leaf | None:
    """The table pointer of `slot` a huge page would replace, as it was before the step: the first present
    non-leaf entry of a level-2+ table inside the slot, largest range first."""
    ranges = [(s.base_gfn, s.base_gfn + s.npages) for s in kvm.memslots if s.id == slot]
    found = []
    for sp in kvm.active_mmu_pages.values():
        if sp.level < 2 or sp.invalid:
            continue
        span = pages_per_hpage(sp.level)
        for index, value in enumerate(sp.spt):
            old = touched.get((sp, index), value)
            gfn = sp.gfn + index * span
            inside = any(low <= gfn and gfn + span <= high for low, high in ranges)
            if inside and old & PT_PRESENT_MASK and not _is_leaf(old, sp.level):
                found.append((-sp.level, gfn, Leaf(sp, index, old, kvm.masks)))
    return min(found, key=lambda item: item[:2])[2] if found else None


def recovery_question(shown: Shown, result: StepResult, slot: int) -> Question | None:
    """What does switching logging off do to the table logging left where a huge page was? 3.14 and 3.16
    leave it (spec §5.3), 4.1 to 6.12 zap it so that the next fault maps the huge page, and 6.13 and later
    replace it at once by a huge leaf built from its first present leaf (§5.7). Asked when the slot has such
    a table, with the same options whatever the answer."""
    kvm = shown.sim.kvm
    table = _table_before(kvm, shown.touched, slot)
    if table is None:
        return None
    last = table.gfn + table.span - 1
    prompt = (
        f"Dirty logging is switched off for slot {slot}. What happens to {table.where}, which points to a"
        f" table of smaller sptes for gfns {_hx(table.gfn)}–{_hx(last)}?"
    )
    new = table.new
    if _is_leaf(new, table.level):
        correct = "huge"
    elif not new & PT_PRESENT_MASK:
        correct = "zap"
    elif new == table.old:
        correct = "same"
    else:
        correct = "other"
    said = _sentences(result, kvm.masks)
    mine = [
        item
        for item in said
        if item.name in ("tdp_mmu_make_huge_spte", "zap_collapsible_spte_range")
        and item.data.get("level") == table.level
        and item.data.get("index") == table.index
        and item.data.get("sp_gfn") == table.sp.gfn
    ]
    story = " ".join(item.text for item in mine[:1])
    if correct == "same":
        story = (
            "Switching logging off frees the bitmap and changes no spte here: the table stays until a"
            " slow-path fault in the range maps a huge page over it."
        )
    # The step's trace may have been cut short after the hundreds of sptes a recovery frees.
    summary = _pick(said, ("kvm_mmu_recover_huge_pages", "kvm_mmu_zap_collapsible_sptes")) or {
        "huge": "One TLB flush for the slot follows: the huge page is back at once, with the bits of the leaf"
        " it was built from.",
    }.get(correct, "")
    if not story and correct == "huge":
        story = (
            f"Logging is off, so a {level_name(table.level)} page can map the range again: the first present"
            " leaf under the table becomes a huge leaf, stored over the pointer in one write."
        )
    change = f"{table.where}: {_hx(table.old)} → {_hx(new)}." if correct != "same" else ""
    options = _ensure(_RECOVERY, correct, "Something else")
    return Question(result.index, LOGGING, prompt, options, correct, _join(change, story, summary))


# ---------------------------------------------------------------------------------------------------------
# GET_DIRTY_LOG: "will it report gfn G?"; the end of a migration: "will a page be lost?"

_REPORT = (Choice("yes", "Yes, it is reported"), Choice("no", "No, it is not reported"))
_ANY = (Choice("yes", "Yes, some page"), Choice("no", "No, nothing"))
_VERDICT = (
    Choice("no", "No: the destination matches the source"),
    Choice("yes", "Yes: some pages are stale on the destination"),
)


def _harvests(step: Step, slot: int, offset: int, mode: str) -> bool:
    """Whether `step` starts a new interval for the dirty bit (or ring entry) of page `offset` of `slot`:
    the step
    that clears it under the VM's dirty-log mode (GET_DIRTY_LOG in plain bitmap mode; CLEAR_DIRTY_LOG
    of a range holding it in any bitmap mode, since with manual protection GET only copies; the ring's
    reset), a migration round, or logging switched."""
    if isinstance(step, MigrateBeginStep | MigrateRoundStep | MigrateEndStep):
        return True
    if isinstance(step, EnableDirtyLogStep | DisableDirtyLogStep):
        return step.slot == slot
    if isinstance(step, GetDirtyLogStep):
        return step.slot == slot and mode == "bitmap"
    if isinstance(step, ClearDirtyLogStep):
        return step.slot == slot and mode != "ring" and step.first <= offset < step.first + step.num
    if isinstance(step, ResetDirtyRingStep):
        return mode == "ring"
    return False


def first_write_since(
    steps: Sequence[Step], index: int, gfn: int, slot: int, mode: str = "bitmap", base_gfn: int = 0
) -> int | None:
    """The earliest step since `gfn`'s dirty bit was last cleared in `slot` (see `_harvests`; or since
    logging was switched on) before step `index` that stores to `gfn`, read from the scenario's ops: the
    learner's "written at #k"."""
    found = None
    for k in range(index - 1, -1, -1):
        step = steps[k]
        if _harvests(step, slot, gfn - base_gfn, mode):
            break
        if isinstance(step, WriteStep):
            offset = gfn - step.gfn
            if step.stride == 0:
                hit = offset == 0
            else:
                hit = offset >= 0 and offset % step.stride == 0 and offset // step.stride < step.count
            if hit:
                found = k
    return found


def _harvest_head(op: Mapping[str, object], mode: str) -> str:
    """What the harvesting step does, in the VM's dirty-log mode: the question's first sentence."""
    name = op.get("op")
    if name == "get_dirty_log":
        return f"KVM_GET_DIRTY_LOG runs on slot {op.get('slot')}."
    if name == "reset_dirty_ring":
        return (
            "Userspace harvests every vCPU's dirty ring, then KVM_RESET_DIRTY_RINGS re-protects what it"
            " harvested."
        )
    if mode == "ring":
        return (
            "A pre-copy round: every vCPU's dirty ring is harvested and reset; what it reports is copied"
            " again."
        )
    if mode != "bitmap":
        return (
            "A pre-copy round: KVM_GET_DIRTY_LOG on every logged slot, then KVM_CLEAR_DIRTY_LOG of what it"
            " returned; what it reports is copied again."
        )
    return "A pre-copy round: KVM_GET_DIRTY_LOG on every logged slot; what it reports is copied again."


def _reported_text(op: Mapping[str, object], mode: str, gfn: int) -> str:
    """Why a reported page is reported, and what becomes of its bit, in the VM's dirty-log mode."""
    page = f"gfn {_hx(gfn)}"
    if op.get("op") == "reset_dirty_ring" or mode == "ring":
        return (
            f"Yes: the fault that marked {page} dirty pushed it to its vCPU's dirty ring; the harvest"
            " collects it, and the reset re-protects the page."
        )
    if mode == "bitmap":
        return f"Yes: {page}'s dirty bit is set, so the ioctl returns it and clears the bit."
    if op.get("op") == "get_dirty_log":
        return (
            f"Yes: {page}'s dirty bit is set, so the ioctl reports it. With manual protection it only copies"
            " the bitmap: the bit stays set, and the page writable, until KVM_CLEAR_DIRTY_LOG."
        )
    return (
        f"Yes: {page}'s dirty bit is set, so GET reports it, and the round's KVM_CLEAR_DIRTY_LOG clears"
        " the bit and re-protects the page before it is copied."
    )


def _clears_bits(step: Step, mode: str) -> bool:
    """Whether `step` clears some dirty bits (or ring entries) under `mode`, or switches logging on."""
    if isinstance(step, MigrateBeginStep | MigrateRoundStep | MigrateEndStep | EnableDirtyLogStep):
        return True
    if isinstance(step, GetDirtyLogStep):
        return mode == "bitmap"
    if isinstance(step, ClearDirtyLogStep):
        return mode != "ring"
    return isinstance(step, ResetDirtyRingStep) and mode == "ring"


def _failed(shown: Shown, result: StepResult, head: str) -> Question:
    """A harvesting ioctl the VM's dirty-log mode refuses: asked as if it ran, about the lowest page the
    guest wrote since bits were last cleared (from the ops, as a harvest that reports it would be asked
    about), and answered "no" by the failure."""
    sim = shown.sim
    steps = sim.scenario.steps
    mode = sim.policy.dirty_log_mode
    written: dict[int, int] = {}
    for k in range(result.index - 1, -1, -1):
        step = steps[k]
        if _clears_bits(step, mode):
            break
        if isinstance(step, WriteStep) and sim.kvm.gfn_to_memslot(step.gfn) is not None:
            written[step.gfn] = k
    said = _pick(_sentences(result, shown.sim.kvm.masks), ("kvm_vm_ioctl",))
    failed = f"No: the ioctl fails ({result.error}) and does nothing."
    if not written:
        prompt = f"{head} Will it report any page at all?"
        return Question(result.index, DIRTY_LOG, prompt, _ANY, "no", _join(failed, said))
    gfn = min(written)
    prompt = f"{head} Will it report gfn {_hx(gfn)}, which the guest wrote at step #{written[gfn] + 1}?"
    return Question(result.index, DIRTY_LOG, prompt, _REPORT, "no", _join(failed, said))


def dirty_log_question(shown: Shown, result: StepResult) -> Question:
    """Will this GET_DIRTY_LOG (or round, or ring harvest) report gfn G? G is a page written since the
    last harvest that the log misses when there is one (the lost write), else a written page it reports,
    else any page it reports; with nothing written or reported it asks whether the log is empty."""
    sim = shown.sim
    steps = sim.scenario.steps
    mode = sim.policy.dirty_log_mode
    head = _harvest_head(result.op, mode)
    if result.error is not None:
        return _failed(shown, result, head)
    reported = list(result.dirty_log or [])
    lost = sorted(
        {v.gfn for v in result.violations if v.invariant == "written_not_logged" and v.gfn is not None}
    )
    listed = ", ".join(_hx(g) for g in reported[:12]) + (" …" if len(reported) > 12 else "")
    returns = f"The log returns {listed}." if reported else "The log returns nothing."
    said = _pick(
        _sentences(result, shown.sim.kvm.masks), ("kvm_vm_ioctl_get_dirty_log", "dirty_ring_harvest")
    )

    def written(gfn: int) -> int | None:
        slot = sim.kvm.gfn_to_memslot(gfn)
        if slot is None:
            return None
        return first_write_since(steps, result.index, gfn, slot.id, mode, slot.base_gfn)

    target: int | None = None
    if lost:
        target = lost[0]
    else:
        for gfn in reported[:_SCAN_REPORTED]:
            if written(gfn) is not None:
                target = gfn
                break
        if target is None and reported:
            target = reported[0]
    if target is None:
        prompt = f"{head} Will it report any page at all?"
        nothing = (
            "No: no vCPU pushed an entry to its dirty ring, so the harvest finds nothing."
            if result.op.get("op") == "reset_dirty_ring" or mode == "ring"
            else "No: no dirty bit is set, so the ioctl returns nothing (and flushes no TLB)."
        )
        return Question(result.index, DIRTY_LOG, prompt, _ANY, "no", _join(nothing, said))
    when = written(target)
    wrote = f", which the guest wrote at step #{when + 1}" if when is not None else ""
    prompt = f"{head} Will it report gfn {_hx(target)}{wrote}?"
    if target in reported:
        explanation = _join(_reported_text(result.op, mode, target), said or returns)
        return Question(result.index, DIRTY_LOG, prompt, _REPORT, "yes", explanation)
    explanation = _join(
        f"No: gfn {_hx(target)} was written{f' at step #{when + 1}' if when is not None else ''} while"
        " the slot was logged, but nothing set its dirty bit.",
        INVARIANT_TEXT["written_not_logged"],
        returns,
    )
    return Question(result.index, DIRTY_LOG, prompt, _REPORT, "no", explanation)


# ---------------------------------------------------------------------------------------------------------
# KVM_CLEAR_DIRTY_LOG: "will it write-protect gfn G again?"

_PROTECT = (
    Choice("yes", "Yes: it loses W, so the next write faults and is logged"),
    Choice("no", "No: it stays writable"),
)
_PROTECT_ANY = (Choice("yes", "Yes, some page"), Choice("no", "No, none"))


def _writable_after(kvm: Kvm, gfn: int) -> bool:
    leaf = leaf_before(kvm, {}, gfn)
    return leaf is not None and bool(leaf.old & PT_WRITABLE_MASK)


def clear_question(shown: Shown, result: StepResult) -> Question:
    """Will this KVM_CLEAR_DIRTY_LOG write-protect gfn G again? G is the first page of the range (among
    its first pages) that the state before maps writable, which the page shows; with none, whether it
    write-protects anything. The answer is read off the sptes after the step."""
    kvm = shown.sim.kvm
    mode = shown.sim.policy.dirty_log_mode
    op = result.op
    slot_id, first, num = (int(str(op.get(key, 0))) for key in ("slot", "first", "num"))
    slot = kvm.memslots.by_id[slot_id]
    low = slot.base_gfn + first
    head = (
        f"KVM_CLEAR_DIRTY_LOG runs on slot {slot_id} over pages {_hx(first)}+{num}"
        f" (gfns {_hx(low)}–{_hx(low + num - 1)}), every bit of its mask set."
    )
    target: tuple[int, Leaf] | None = None
    for gfn in range(low, low + min(num, _SCAN_REPORTED)):
        leaf = leaf_before(kvm, shown.touched, gfn)
        if leaf is not None and leaf.old & PT_WRITABLE_MASK:
            target = (gfn, leaf)
            break
    said = _pick(
        _sentences(result, shown.sim.kvm.masks),
        ("kvm_vm_ioctl", "kvm_clear_dirty_log_protect", "kvm_arch_mmu_enable_log_dirty_pt_masked"),
    )
    if result.error is not None:
        failed = f"No: the ioctl fails ({result.error}) and does nothing."
        prompt = (
            f"{head} Will it write-protect any page?"
            if target is None
            else f"{head} Will it write-protect gfn {_hx(target[0])}, mapped by {target[1].describe()}?"
        )
        return Question(
            result.index,
            CLEAR,
            prompt,
            _PROTECT_ANY if target is None else _PROTECT,
            "no",
            _join(failed, said),
        )
    if target is None:
        protected = any(
            old & PT_WRITABLE_MASK and not sp.spt[index] & PT_WRITABLE_MASK
            for (sp, index), old in shown.touched.items()
        )
        prompt = f"{head} Will it write-protect any page?"
        if protected:
            return Question(result.index, CLEAR, prompt, _PROTECT_ANY, "yes", said)
        why = (
            "No: nothing in the range is mapped writable. In plain bitmap mode KVM_GET_DIRTY_LOG already"
            " cleared the bits it returned and re-protected their pages, so CLEAR finds nothing to do."
            if mode == "bitmap"
            else "No: nothing in the range is mapped writable, so there is nothing to re-protect."
        )
        return Question(result.index, CLEAR, prompt, _PROTECT_ANY, "no", _join(why, said))
    gfn, leaf = target
    prompt = f"{head} Will it write-protect gfn {_hx(gfn)}, mapped by {leaf.describe()}?"
    after = leaf_before(kvm, {}, gfn)
    change = f"{leaf.where}: {_hx(leaf.old)} → {_hx(leaf.new)}." if leaf.old != leaf.new else ""
    if not _writable_after(kvm, gfn):
        how = (
            f" gfn {_hx(gfn)} is now mapped by {after.where}, read-only."
            if after is not None and (after.sp, after.index) != (leaf.sp, leaf.index)
            else ""
        )
        return Question(result.index, CLEAR, prompt, _PROTECT, "yes", _join(change + how, said))
    why = (
        f"No: {leaf.where} keeps W: CLEAR re-protects only pages whose dirty bit was set, through the 4K"
        " rmaps."
    )
    return Question(result.index, CLEAR, prompt, _PROTECT, "no", _join(why, said))


def verdict_question(shown: Shown, result: StepResult) -> Question:
    """Will the migration lose a page? Asked at the stop-and-copy, where the model compares both sides."""
    lost = list(shown.sim.migration.lost or [])
    prompt = (
        "Stop-and-copy: the vCPUs stop, a last GET_DIRTY_LOG round copies what it reports, and the"
        " destination is compared with the source. Will any page be lost?"
    )
    said = _pick(_sentences(result, shown.sim.kvm.masks), ("migrate_verdict",))
    if lost:
        shown_gfns = ", ".join(_hx(g) for g in lost[:12]) + (" …" if len(lost) > 12 else "")
        fallback = f"Yes: {len(lost)} page{'s' if len(lost) != 1 else ''} lost: {shown_gfns}."
        return Question(result.index, VERDICT, prompt, _VERDICT, "yes", said or fallback)
    fallback = "No: every write since logging began was reported, so the destination matches the source."
    return Question(result.index, VERDICT, prompt, _VERDICT, "no", said or fallback)


# ---------------------------------------------------------------------------------------------------------
# The entry point


def question_for(shown: Shown) -> Question | None:
    """The question about step `shown.n - 1`, derived from the state after it (`shown`), or None for a
    step that asks nothing sensible (a note, a TLB flush, zapping everything, switching logging on for a
    slot nothing maps, or off for one without a table a huge page could replace). An ioctl the dirty-log
    mode refuses is asked about as if it ran: that it fails is the answer."""
    result = shown.result
    if result is None:
        return None
    name = result.op.get("op")
    if name in ("read", "write"):
        return access_question(shown, result)
    if name == "enable_dirty_log":
        return logging_question(shown, result, [int(str(result.op.get("slot")))])
    if name == "disable_dirty_log":
        return recovery_question(shown, result, int(str(result.op.get("slot"))))
    if name == "migrate_begin":
        return logging_question(shown, result, shown.sim.migration.enabled_slots)
    if name in ("get_dirty_log", "migrate_round", "reset_dirty_ring"):
        return dirty_log_question(shown, result)
    if name == "clear_dirty_log":
        return clear_question(shown, result)
    if name == "migrate_end":
        return verdict_question(shown, result)
    return None


# ---------------------------------------------------------------------------------------------------------
# The panel


@dataclass(frozen=True, slots=True)
class PredictPanel:
    """What the question panel shows at step `step`: the verdict on the answer in the URL (about step
    `step - 1`), the running score with it counted, and the question about step `step`, or the final
    score at the end."""

    step: int
    total: int
    feedback: Feedback | None
    question: Question | None
    score: tuple[int, int]
    upcoming: str  # step `step` in short, "" at the end
    note: str  # the text of step `step` when it is a note

    @property
    def finished(self) -> bool:
        return self.step >= self.total

    @property
    def waiting(self) -> bool:
        """A question waits for its answer: stepping forward is off until it is given."""
        return self.question is not None


def predict_panel(
    step: int,
    total: int,
    score: tuple[int, int],
    feedback: Feedback | None,
    question: Question | None,
    upcoming: str,
    note: str,
) -> PredictPanel:
    return PredictPanel(step, total, feedback, question, scored(score, feedback), upcoming, note)
