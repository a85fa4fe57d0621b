"""The questions' common ground: the kinds, a question and its verdict, and reading the engine's values
(the spte a step replaced, the trace panel's sentences for the events that decided an answer)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from app.explain.context import Context
from app.explain.events import explain
from engine.kvm import Kvm
from engine.shadow_page import KvmMmuPage
from engine.simulation import StepResult
from engine.spte import (
    FLAG_BITS,
    SpteMasks,
    flag_word,
    is_last_spte,
    is_shadow_present_pte,
    level_name,
    pages_per_hpage,
    spte_index,
)
from engine.tdp_iter import spte_to_child_sp
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
    return is_shadow_present_pte(value) and is_last_spte(value, level)


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
        if not is_shadow_present_pte(old):
            return None
        if _is_leaf(old, sp.level):
            return Leaf(sp, index, old, kvm.masks)
        sp = spte_to_child_sp(kvm, old)
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
