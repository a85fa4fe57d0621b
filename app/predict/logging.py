"""Dirty logging switched on ("what happens to the large spte?") and off ("what happens to the table
logging left behind?")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.predict.base import (
    LOGGING,
    Choice,
    Leaf,
    Question,
    _ensure,
    _hx,
    _is_leaf,
    _join,
    _pick,
    _Said,
    _said_of,
    _sentences,
)
from app.replay import Shown
from app.views.tree import leaf_counts
from engine.kvm import Kvm
from engine.ops.registry import op_spec
from engine.shadow_page import KvmMmuPage
from engine.simulation import StepResult
from engine.spte import (
    is_large_leaf,
    is_shadow_present_pte,
    is_writable_pte,
    level_name,
    pages_per_hpage,
)
from engine.tdp_iter import spte_to_child_sp

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
            if is_large_leaf(old):
                leaf = Leaf(sp, index, old, kvm.masks)
                if inside(leaf.gfn):
                    large[(leaf.gfn, -leaf.level)] = leaf
    small = {}
    for (sp, index), old in touched.items():
        if sp.level == 1 and is_shadow_present_pte(old) and not sp.invalid:
            leaf = Leaf(sp, index, old, kvm.masks)
            if inside(leaf.gfn):
                small[leaf.gfn] = leaf
    return [large[key] for key in sorted(large)] + [small[key] for key in sorted(small)]


def _logging_outcome(leaf: Leaf) -> str:
    """The answer key: "zap" (gone), "split" (a large leaf became a pointer to a table), "wp" (it lost
    W) or "same"."""
    old, new = leaf.old, leaf.new
    if not is_shadow_present_pte(new):
        return "zap"
    if leaf.level > 1 and not _is_leaf(new, leaf.level):
        return "split"
    if is_writable_pte(old) and not is_writable_pte(new):
        return "wp"
    return "same"


def small_leaves_under(kvm: Kvm, table: int) -> tuple[int, int]:
    """(present, writable) 4K leaves under the non-leaf spte `table`: what a split left in its place (a
    1G leaf split to 4K is 512 tables of 512)."""
    counts = leaf_counts(kvm, spte_to_child_sp(kvm, table))
    return counts.small, counts.writable_small


def _split_story(kvm: Kvm, leaf: Leaf, said: list[_Said]) -> str:
    mine = _said_of(said, "tdp_mmu_split_huge_page", leaf)
    story = mine[0].text if mine else _pick(said, ("kvm_mmu_slot_try_split_huge_pages",))
    if not story:  # the step's trace was cut short before the split's events
        story = (
            f"{leaf.where} is split as logging starts (eager page splitting): a table of smaller sptes"
            " with the same permissions replaces it, so every page stays mapped."
        )
    present, writable = small_leaves_under(kvm, leaf.new)
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
        if op_spec(result.op).begins_migration
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
            if inside and is_shadow_present_pte(old) and not _is_leaf(old, sp.level):
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
    elif not is_shadow_present_pte(new):
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


def logging_on_question(shown: Shown, result: StepResult) -> Question | None:
    """Logging switched on: for the slot the op names, or every slot a migration's start logged."""
    slot = op_spec(result.op).slot(result.op)
    return logging_question(shown, result, [slot] if slot is not None else shown.sim.migration.enabled_slots)


def logging_off_question(shown: Shown, result: StepResult) -> Question | None:
    """Logging switched off for the slot the op names."""
    slot = op_spec(result.op).slot(result.op)
    return recovery_question(shown, result, slot) if slot is not None else None
