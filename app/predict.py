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

Everything here is a pure function of engine values; the explanations reuse `app.explain`'s sentences for
the trace events that decided the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from app.cache import Shown
from app.explain import INVARIANT_TEXT, Context, explain
from engine.kvm import Kvm
from engine.scenario import (
    DisableDirtyLogStep,
    EnableDirtyLogStep,
    GetDirtyLogStep,
    MigrateBeginStep,
    MigrateEndStep,
    MigrateRoundStep,
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
    level_name,
    pages_per_hpage,
    spte_index,
)
from engine.trace import event_json

# The kinds of question, as the page's `data-question` hook names them.
FAULT, BITS, LOGGING, DIRTY_LOG, VERDICT = "fault", "bits", "logging", "dirty_log", "verdict"

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


def _bits(value: int) -> str:
    """The eight flags in their fixed order, an unset one as a dot, as the tree draws them."""
    return " ".join(name if value & bit else "·" for name, bit in FLAG_BITS)


def _is_leaf(value: int, level: int) -> bool:
    return bool(value & PT_PRESENT_MASK) and (level == 1 or bool(value & PT_PAGE_SIZE_MASK))


@dataclass(frozen=True, slots=True)
class Leaf:
    """An spte as it was before the step, and where it lives."""

    sp: KvmMmuPage
    index: int
    old: int

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
        return f"{self.where}, {what} ({_bits(self.old)})"


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
            return Leaf(sp, index, old)
        sp = kvm.sp_by_pfn.get((old & PT64_BASE_ADDR_MASK) >> 12)
    return None


class _Said(NamedTuple):
    name: str
    data: dict[str, object]
    text: str


def _sentences(result: StepResult) -> list[_Said]:
    """Every trace event of the step with the trace panel's sentence for it (one Context for the whole
    step, as the panel uses, so "the gfn the guest wrote" means the same here)."""
    if result.events is None:
        return []
    ctx = Context()
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
    said = _sentences(result)
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


def _bits_change(old: int, new: int, level: int) -> str:
    """The answer key of an spte's change: "none", "gone" (removed or replaced by something else), or
    the flags it gained and lost, "set-ad", "clear-w", "set-d-clear-w"."""
    if old == new:
        return "none"
    if not _is_leaf(new, level) or (old ^ new) & PT64_BASE_ADDR_MASK:
        return "gone"
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
    correct = _bits_change(leaf.old, leaf.new, leaf.level)
    prompt = f"vCPU {vcpu} {verb} gfn {_hx(gfn)} through {leaf.describe()}. Which of its bits change?"
    said = _sentences(result)
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
    Choice("same", "Unchanged"),
)


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
                leaf = Leaf(sp, index, old)
                if inside(leaf.gfn):
                    large[(leaf.gfn, -leaf.level)] = leaf
    small = {}
    for (sp, index), old in touched.items():
        if sp.level == 1 and old & PT_PRESENT_MASK and not sp.invalid:
            leaf = Leaf(sp, index, old)
            if inside(leaf.gfn):
                small[leaf.gfn] = leaf
    return [large[key] for key in sorted(large)] + [small[key] for key in sorted(small)]


def _logging_outcome(leaf: Leaf) -> str:
    old, new = leaf.old, leaf.new
    if not new & PT_PRESENT_MASK:
        return "zap"
    if old & PT_WRITABLE_MASK and not new & PT_WRITABLE_MASK:
        return "wp"
    return "same"


def logging_question(shown: Shown, result: StepResult, slots: Sequence[int]) -> Question | None:
    """What does turning dirty logging on do to a mapping of the slot? Asked about the first large spte
    (the patch's subject: zapped before it, write-protected after), else the first 4K leaf."""
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
    said = _sentences(result)
    mine = _said_of(said, "spte_write_protect", leaf)
    if mine:
        story = mine[0].text
    elif correct == "same":
        story = f"{leaf.where} has no W bit to clear, so write protection leaves it as it is."
    else:
        story = _pick(said, ("kvm_mmu_slot_remove_write_access",))
    change = f"{leaf.where}: {_hx(leaf.old)} → {_hx(leaf.new)}." if correct != "same" else ""
    return Question(result.index, LOGGING, prompt, _LOGGING, correct, _join(change, story))


# ---------------------------------------------------------------------------------------------------------
# GET_DIRTY_LOG: "will it report gfn G?"; the end of a migration: "will a page be lost?"

_REPORT = (Choice("yes", "Yes, it is reported"), Choice("no", "No, it is not reported"))
_ANY = (Choice("yes", "Yes, some page"), Choice("no", "No, nothing"))
_VERDICT = (
    Choice("no", "No: the destination matches the source"),
    Choice("yes", "Yes: some pages are stale on the destination"),
)


def _harvests(step: Step, slot: int) -> bool:
    """Whether `step` starts a new interval for `slot`'s dirty log: a GET of it, or logging switched."""
    if isinstance(step, MigrateBeginStep | MigrateRoundStep | MigrateEndStep):
        return True
    if isinstance(step, GetDirtyLogStep | EnableDirtyLogStep | DisableDirtyLogStep):
        return step.slot == slot
    return False


def first_write_since(steps: Sequence[Step], index: int, gfn: int, slot: int) -> int | None:
    """The earliest step since `slot`'s last GET_DIRTY_LOG (or since logging was switched on) before
    step `index` that stores to `gfn`, read from the scenario's ops: the learner's "written at #k"."""
    found = None
    for k in range(index - 1, -1, -1):
        step = steps[k]
        if _harvests(step, slot):
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


def dirty_log_question(shown: Shown, result: StepResult) -> Question:
    """Will this GET_DIRTY_LOG report gfn G? G is a page written since the last GET that the log misses
    when there is one (the lost write), else a written page it reports, else any page it reports; with
    nothing written or reported it asks whether the log is empty."""
    sim = shown.sim
    steps = sim.scenario.steps
    reported = list(result.dirty_log or [])
    lost = sorted(
        {v.gfn for v in result.violations if v.invariant == "written_not_logged" and v.gfn is not None}
    )
    if result.op.get("op") == "get_dirty_log":
        head = f"KVM_GET_DIRTY_LOG runs on slot {result.op.get('slot')}."
    else:
        head = "A pre-copy round: KVM_GET_DIRTY_LOG on every logged slot; what it reports is copied again."
    listed = ", ".join(_hx(g) for g in reported[:12]) + (" …" if len(reported) > 12 else "")
    returns = f"The log returns {listed}." if reported else "The log returns nothing."
    said = _pick(_sentences(result), ("kvm_vm_ioctl_get_dirty_log",))

    def written(gfn: int) -> int | None:
        slot = sim.kvm.gfn_to_memslot(gfn)
        return None if slot is None else first_write_since(steps, result.index, gfn, slot.id)

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
        explanation = _join(
            "No: no dirty bit is set, so the ioctl returns nothing (and flushes no TLB).", said
        )
        return Question(result.index, DIRTY_LOG, prompt, _ANY, "no", explanation)
    when = written(target)
    wrote = f", which the guest wrote at step #{when}" if when is not None else ""
    prompt = f"{head} Will it report gfn {_hx(target)}{wrote}?"
    if target in reported:
        explanation = _join(
            f"Yes: gfn {_hx(target)}'s dirty bit is set, so the ioctl returns it and clears the bit.",
            said or returns,
        )
        return Question(result.index, DIRTY_LOG, prompt, _REPORT, "yes", explanation)
    explanation = _join(
        f"No: gfn {_hx(target)} was written{f' at step #{when}' if when is not None else ''} while the slot"
        " was logged, but nothing set its dirty bit.",
        INVARIANT_TEXT["written_not_logged"],
        returns,
    )
    return Question(result.index, DIRTY_LOG, prompt, _REPORT, "no", explanation)


def verdict_question(shown: Shown, result: StepResult) -> Question:
    """Will the migration lose a page? Asked at the stop-and-copy, where the model compares both sides."""
    lost = list(shown.sim.migration.lost or [])
    prompt = (
        "Stop-and-copy: the vCPUs stop, a last GET_DIRTY_LOG round copies what it reports, and the"
        " destination is compared with the source. Will any page be lost?"
    )
    said = _pick(_sentences(result), ("migrate_verdict",))
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
    step that asks nothing sensible (a note, a TLB flush, zapping everything, switching logging off,
    enabling logging on a slot nothing maps)."""
    result = shown.result
    if result is None or result.error is not None:  # a refused ioctl asks nothing
        return None
    name = result.op.get("op")
    if name in ("read", "write"):
        return access_question(shown, result)
    if name == "enable_dirty_log":
        return logging_question(shown, result, [int(str(result.op.get("slot")))])
    if name == "migrate_begin":
        return logging_question(shown, result, shown.sim.migration.enabled_slots)
    if name in ("get_dirty_log", "migrate_round"):
        return dirty_log_question(shown, result)
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
