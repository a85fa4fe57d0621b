"""Predict mode: the questions app/predict derives from the engine's results, and the player's
`mode=predict` and `present=1` pages (docs/ui-hooks.md, "Predict mode" and "Presentation mode").

The expected answers come from the spec's worked example (kvm-mmu.md §7.2), never from a run. The built-in
scenario's step indexes differ from the spec's step numbers (see test_worked_example.py):

    index       0     1     2              3     4     5     6     7              8     9     10     11
    spec step   1     2     3              4     5     6     6     7              8     8     9      9
    op          read  write migrate_begin  read  write write write migrate_round  write write round  end
    gfn         0x210 0x2a0                0x2c0 0x250 0x260 0x2c0                0x250 0x300
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from conftest import LAYOUT_6X, spec_example
from fastapi.testclient import TestClient
from test_app_routes import Page, page

from app.cache import Run
from app.main import create_app
from app.predict import (
    BITS,
    DIRTY_LOG,
    FAULT,
    LOGGING,
    VERDICT,
    Feedback,
    Question,
    judge,
    leaf_before,
    many_outcome,
    question_for,
    scored,
    single_outcome,
)
from app.settings import Settings
from engine.codec import encode_scenario
from engine.policy import make_policy
from engine.scenario import WriteStep, parse_scenario
from engine.simulation import StepResult
from scenarios import load_builtin_text

EXAMPLE = "worked-example"
STEPS = 12
PLAY = f"/play?scenario={EXAMPLE}"
LOST_BY_LAZY_BUGGY = [0x250, 0x260, 0x2C0, 0x300]

# The right answer to each step's question, per preset, with the spec's reason (§7.2 step N).
EXPECTED: dict[str, list[str]] = {
    "zap": [
        "slow",  # step 1: nothing maps 0x210, a read → slow path, a 2M leaf
        "set-d",  # step 2: no exit, the CPU sets D on L2[1]
        "zap",  # step 3 (a): the writable large spte is zapped
        "slow",  # step 4 (a): L2[1] non-present → slow path, level forced to 1
        "slow",  # step 5 (a): L1[0x50] non-present, not eligible for the fast path
        "slow",  # step 6 (a): 0x260 not-present fault → slow
        "set-d",  # step 6 (a): L1[0xc0] already RW (from step 4) → no exit; the CPU sets D
        "yes",  # step 7 (a): {0x250, 0x260, 0x2c0}
        "fast",  # step 8 (a): 4K read-only spte with HW∧MW → fast path
        "slow",  # step 8 (a): 0x300 not-present → slow
        "yes",  # step 9 (a): {0x250, 0x300}
        "no",  # §7.3: nothing lost
    ],
    "lazy-buggy": [
        "slow",
        "set-d",
        "wp",  # step 3 (b): W cleared, the 2M spte stays
        "none",  # step 4 (b): no fault
        "fast",  # step 5 (b): CAS sets W on the 2M spte
        "none",  # step 6 (b): no exit, not logged
        "none",  # step 6 (b): no exit, not logged
        "no",  # step 7 (b): {0x200}; 0x250 is lost
        "none",  # step 8 (b): no exit
        "none",  # step 8 (b): no exit
        "no",  # step 9 (b): {}: both writes lost
        "yes",  # step 9: the destination gets stale data for every page written from step 5 on
    ],
    "lazy": [
        "slow",
        "set-d",
        "wp",  # step 3 (c): same as (b)
        "none",  # step 4 (c): no fault, the patch's benefit
        "bail",  # step 5 (c): guard: level > 1 → give up; the slow path drops the large spte
        "slow",  # step 6 (c): not-present fault → slow
        "slow",  # step 6 (c): not-present fault → slow (the 2M spte was dropped in step 5)
        "yes",
        "fast",  # step 8 (c): fast path, as (a)
        "slow",
        "yes",
        "no",
    ],
    # The modern preset (upstream 6.13 and later) on the same steps: §5.7 (make_spte builds the writable 2M
    # spte of step 1 with D already set), §5.2 (eager splitting at enable; every write then a fast fault on
    # its own read-only 4K spte, a read a hit on a present one).
    "modern": [
        "slow",
        "none",  # §5.7: D is already set, so the store takes no exit and the CPU has no bit to set
        "split",  # §5.2: the 2M spte becomes a table of 512 read-only 4K sptes
        "none",  # the read goes through its present, read-only 4K spte: no fault
        "fast",
        "fast",
        "fast",
        "yes",  # §3.6: [0x250, 0x260, 0x2c0], the pages written since logging began
        "fast",
        "fast",  # 0x300 already has a read-only 4K spte from the split
        "yes",  # [0x250, 0x300]
        "no",
    ],
}
KINDS = [FAULT, BITS, LOGGING, FAULT, FAULT, FAULT, FAULT, DIRTY_LOG, FAULT, FAULT, DIRTY_LOG, VERDICT]


@cache
def questions(
    preset: str, scenario_text: str | None = None, switches: tuple[tuple[str, str], ...] = ()
) -> tuple[Question | None, ...]:
    """Every step's question, derived as the player derives it: from `Run.at(n + 1)`."""
    text = scenario_text if scenario_text is not None else load_builtin_text(EXAMPLE)
    scenario = parse_scenario(text)
    policy = make_policy(preset, dict(switches))
    run = Run(("test", policy), scenario, policy, Settings())
    out = []
    for index in range(len(scenario.steps)):
        shown = run.at(index + 1)
        try:
            out.append(question_for(shown))
        finally:
            run.park(shown)
    return tuple(out)


def asked(preset: str, index: int) -> Question:
    question = questions(preset)[index]
    assert question is not None, f"step {index} asks nothing under {preset}"
    return question


# ---------------------------------------------------------------------------------------------------------
# app/predict on the worked example


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_the_right_answers_are_the_spec_s(preset: str) -> None:
    got = [asked(preset, index).correct for index in range(STEPS)]
    assert got == EXPECTED[preset]


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_every_step_asks_a_well_formed_question(preset: str) -> None:
    for index in range(STEPS):
        question = asked(preset, index)
        assert question.step == index
        keys = question.keys
        assert 2 <= len(keys) <= 4, (index, keys)
        assert len(set(keys)) == len(keys)
        assert question.correct in keys
        assert all(re.fullmatch(r"[a-z][a-z0-9-]{0,23}", key) for key in keys)
        assert question.prompt.endswith("?")
        assert question.explanation


def test_the_kinds_follow_the_op_and_the_state_before() -> None:
    assert [asked("lazy-buggy", i).kind for i in range(STEPS)] == KINDS
    assert [asked("lazy", i).kind for i in range(STEPS)] == KINDS
    # Under zap the read of step 4 mapped 0x2c0 writable, so the write of step 6 goes through a writable
    # 4K spte whose D is clear: a bits question there.
    assert [asked("zap", i).kind for i in range(STEPS)] == [*KINDS[:6], BITS, *KINDS[7:]]


def test_questions_are_deterministic() -> None:
    questions.cache_clear()
    first = questions("lazy-buggy")
    questions.cache_clear()
    assert questions("lazy-buggy") == first


def test_the_prompt_does_not_give_the_answer_away() -> None:
    """Where the presets answer differently from the same state, they ask the same question."""
    for index in (4, 5, 6, 7, 10, 11):
        buggy, lazy = asked("lazy-buggy", index), asked("lazy", index)
        assert buggy.correct != lazy.correct
        assert (buggy.prompt, buggy.options) == (lazy.prompt, lazy.options), index


def test_the_decisive_write() -> None:
    """§7.2 step 5: lazy-buggy's fast path fixes the large spte and marks 0x200; lazy's bails and the
    slow path maps 4K; zap takes a slow fault."""
    buggy = asked("lazy-buggy", 4)
    assert buggy.prompt.startswith("vCPU 0 writes gfn 0x250.")
    assert buggy.keys == ["none", "fast", "bail", "slow"]
    assert "2M spte" in buggy.explanation and "gfn 0x200 marked dirty, not gfn 0x250" in buggy.explanation
    lazy = asked("lazy", 4)
    assert "refuses" in lazy.explanation and "large" in lazy.explanation
    assert "dropped" in lazy.explanation and "4K leaf" in lazy.explanation
    assert "marked dirty" in asked("zap", 4).explanation


def test_a_store_the_log_never_hears_of() -> None:
    """§7.2 step 6 (b): no exit, not logged; the explanation says so."""
    for index, gfn in ((5, "0x260"), (6, "0x2c0"), (8, "0x250"), (9, "0x300")):
        question = asked("lazy-buggy", index)
        assert question.correct == "none"
        assert f"nothing marks gfn {gfn} dirty" in question.explanation


def test_the_hardware_sets_d() -> None:
    """§7.2 step 2: the store takes no exit and the CPU sets D on L2[1] (0x80000DF7 → 0x80000FF7)."""
    question = asked("lazy", 1)
    assert "L2[0x1]" in question.prompt and "(R W X PS A · HW MW)" in question.prompt
    assert question.keys == ["none", "set-d", "set-ad", "gone"]
    assert "0x80000df7 → 0x80000ff7" in question.explanation
    assert "dirty (D)" in question.explanation
    zap = asked("zap", 6)
    assert "L1[0xc0]" in zap.prompt and "0x800c0d77 → 0x800c0f77" in zap.explanation


def test_enabling_logging() -> None:
    """§7.2 step 3: zapped under zap, W cleared under both lazy presets (0x80000FF7 → 0x80000FF5)."""
    assert asked("zap", 2).keys == ["zap", "wp", "split", "same"]
    assert "0x80000ff7 → 0x0" in asked("zap", 2).explanation
    assert "zaps the large spte" in asked("zap", 2).explanation
    lazy = asked("lazy", 2)
    assert "L2[0x1], the 2M spte mapping gfns 0x200–0x3ff" in lazy.prompt
    assert "0x80000ff7 → 0x80000ff5" in lazy.explanation and "loses W but stays" in lazy.explanation


def test_enabling_logging_splits_under_modern() -> None:
    """§5.2: eager splitting replaces the 2M spte by a table; write protection leaves all 512 read-only."""
    modern = asked("modern", 2)
    assert modern.prompt == asked("lazy", 2).prompt and modern.options == asked("lazy", 2).options
    assert modern.correct == "split"
    # The 2M spte as 6.13+ built it (§5.7 "spte encoding", and D set by make_spte): W PS A D HW MW.
    lay = LAYOUT_6X
    old = lay.leaf(0x80000, lay.W | lay.PS | lay.A | lay.D | lay.HW | lay.MW)
    # The new table is the model's third table page (engine/kvm.py TABLE_PFN_BASE; root and L3 took the first
    # two), linked by a pointer with the layout's present bits (§1.3, §5.7).
    assert f"L2[0x1]: {old:#x} → {lay.nonleaf(0x1003):#x}." in modern.explanation
    assert "512 now map the range, all of them read-only" in modern.explanation
    # Without eager splitting the modern kernel write-protects the 2M spte as 3.16 does (§5.1).
    assert questions("modern", None, (("eager_split", "false"),))[2].correct == "wp"  # type: ignore[union-attr]


# todays-kernel: step 9 reads 0x410, which nothing maps yet; step 14 writes 0x250 once logging is off.
TODAY = "todays-kernel"


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_a_read_fault_under_logging_is_logged_under_every_preset(preset: str) -> None:
    """§3.10 (3.x) and §5.7 (6.13+): a read that faults on a logged slot whose host page is writable maps
    a writable spte and logs the page; the explanation says so, under modern as under 3.x."""
    question = questions(preset, load_builtin_text(TODAY))[9]
    assert question is not None and question.prompt.startswith("vCPU 0 reads gfn 0x410.")
    assert question.correct == "slow"
    assert "dirty log although the guest only read it" in question.explanation


FIRST_WRITE_AFTER_DISABLE = {
    # §3.9 "the level argument in 3.14": logging off asks about level 2, where a 4K spte is not last:
    # the fast path gives up, the slow path maps 2M.
    "zap": "bail",
    # §4.2: the writable 2M spte never left: no exit.
    "lazy-buggy": "none",
    # 3.16 asks about the sp's level: the 4K spte is fixed locklessly.
    "lazy": "fast",
    # §5.7: disabling recovered a read-only, MMU-writable 2M leaf; with logging off the fast path may fix
    # it (the guard applies only while logging, §5.1).
    "modern": "fast",
}


@pytest.mark.parametrize(("preset", "expected"), FIRST_WRITE_AFTER_DISABLE.items())
def test_the_first_write_after_logging_stops(preset: str, expected: str) -> None:
    question = questions(preset, load_builtin_text(TODAY))[14]
    assert question is not None and question.prompt.startswith("vCPU 0 writes gfn 0x250.")
    assert question.correct == expected
    if expected == "fast":
        # Nothing is logged any more: the explanation must not talk of a page lost to the log.
        assert "not dirty-logged, so nothing is marked" in question.explanation
        assert "without a dirty bit" not in question.explanation
    if preset == "modern":
        assert "2M spte" in question.explanation


# disable-dirty-log: step 6 switches logging off after a short logging phase.
DISABLE = "disable-dirty-log"
RECOVERY: list[tuple[str, tuple[tuple[str, str], ...], str]] = [
    # §2 / §5.3: 3.14 and 3.16 change no spte when logging stops; the 4K table stays.
    ("zap", (), "same"),
    ("lazy", (), "same"),
    # §5.7: 6.13 and later replace the table at once by a huge leaf built from its first present leaf.
    ("modern", (), "huge"),
    # §5.3 / §5.7: 4.1 to 6.12 zap it, so that the next fault maps the huge page.
    ("modern", (("huge_page_recovery", "zap_collapsible"),), "zap"),
    ("modern", (("recover_on_disable", "false"),), "same"),
]


@pytest.mark.parametrize(("preset", "switches", "expected"), RECOVERY)
def test_switching_logging_off_asks_what_becomes_of_the_table(
    preset: str, switches: tuple[tuple[str, str], ...], expected: str
) -> None:
    question = questions(preset, load_builtin_text(DISABLE), switches)[6]
    assert question is not None and question.kind == LOGGING
    # The same question whatever the answer: the table's place and range, which the page shows.
    assert question.prompt == (
        "Dirty logging is switched off for slot 1. What happens to L2[0x1], which points to a table of"
        " smaller sptes for gfns 0x200–0x3ff?"
    )
    assert question.keys == ["same", "zap", "huge"]
    assert question.correct == expected
    if expected == "huge":
        # §5.7: the first present leaf (0x200's 4K spte: R X A D HW MW, read-only since logging began)
        # with PS set and the address masked to 2M; one flush for the slot.
        lay = LAYOUT_6X
        huge = lay.leaf(0x80000, lay.PS | lay.A | lay.D | lay.HW | lay.MW)
        assert f"→ {huge:#x}." in question.explanation
        assert "first present leaf" in question.explanation and "flush" in question.explanation
    if expected == "same":
        assert "changes no spte" in question.explanation


def test_switching_logging_off_asks_nothing_without_a_table() -> None:
    # §4.2: lazy-buggy's range never left its writable 2M leaf: there is no table to ask about.
    assert questions("lazy-buggy", load_builtin_text(DISABLE))[6] is None


def test_enabling_logging_initially_set_touches_nothing() -> None:
    """§5.4: with KVM_DIRTY_LOG_INITIALLY_SET every bit is set and no spte is touched."""
    question = questions("modern", None, (("dirty_log_mode", "initially_set"),))[2]
    assert question is not None and question.kind == LOGGING
    assert question.correct == "same"
    assert "every bit set" in question.explanation and "no spte is touched" in question.explanation
    assert "no W bit" not in question.explanation


def test_enabling_logging_on_a_4k_spte_has_no_split_option() -> None:
    text = small_scenario([{"op": "write", "gfn": "0x210"}, {"op": "enable_dirty_log", "slot": 1}])
    nested = json.loads(text)
    nested["vm"]["max_page_level"] = "4K"
    question = questions("modern", json.dumps(nested))[1]
    assert question is not None and question.keys == ["zap", "wp", "same"] and question.correct == "wp"


def test_the_get_rounds_ask_about_the_lost_pages() -> None:
    """§7.2 steps 7 and 9: lazy-buggy's rounds miss 0x250 (and the rest), the others report it."""
    # The write of 0x250 is scenario index 4 (step 5) and index 8 (step 9): the op that leads to step N is
    # "step #N" on every page.
    for index, written in ((7, 5), (10, 9)):
        buggy, lazy = asked("lazy-buggy", index), asked("lazy", index)
        assert f"gfn 0x250, which the guest wrote at step #{written}?" in buggy.prompt
        assert buggy.correct == "no" and lazy.correct == "yes" and asked("zap", index).correct == "yes"
        assert "no GET_DIRTY_LOG reported: a migration would lose it" in buggy.explanation
    assert "The log returns 0x200." in asked("lazy-buggy", 7).explanation
    assert "The log returns nothing." in asked("lazy-buggy", 10).explanation
    assert "0x250 0x260 0x2c0" in asked("lazy", 7).explanation


def test_the_verdict_names_the_lost_pages() -> None:
    buggy = asked("lazy-buggy", 11)
    assert buggy.correct == "yes"
    assert "4 pages LOST (" + " ".join(f"{g:#x}" for g in LOST_BY_LAZY_BUGGY) + ")" in buggy.explanation
    assert "no page is lost" in asked("lazy", 11).explanation


def small_scenario(steps: list[dict[str, Any]]) -> str:
    """The worked example's VM and memslot with other steps."""
    return json.dumps({**spec_example(), "title": "predict", "steps": steps})


NO_QUESTIONS = small_scenario(
    [
        {"op": "note", "text": "Nothing mapped yet."},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "get_dirty_log", "slot": 1},
        {"op": "read", "gfn": "0x200", "count": 4},
        {"op": "flush_tlb"},
        {"op": "disable_dirty_log", "slot": 1},
        {"op": "zap_all"},
    ]
)


def test_steps_without_a_sensible_question() -> None:
    found = questions("lazy", NO_QUESTIONS)
    # A note, logging switched on with nothing mapped, a TLB flush, zap_all: nothing to ask.
    assert [i for i, q in enumerate(found) if q is None] == [0, 1, 4, 6]
    # Logging switched off is asked about: the reads under logging left a table of 4K sptes (§3.8), which
    # 3.16 keeps (§2).
    off = found[5]
    assert off is not None and off.kind == LOGGING and off.correct == "same"
    empty = found[2]
    assert empty is not None and empty.kind == DIRTY_LOG
    assert "any page at all?" in empty.prompt and empty.correct == "no"
    many = found[3]
    assert many is not None and many.kind == FAULT
    assert many.keys == ["none", "fast", "slow", "both"] and many.correct == "slow"
    assert "4 pages from gfn 0x200" in many.prompt


# The clear-dirty-log steps: 0 write, 1 enable, 2 note, 3-5 writes 0x250 0x260 0x300, 6 GET, 7 note,
# 8 CLEAR of pages 0x40+64 (gfns 0x240-0x27f), 9 note, 10-11 writes 0x250 0x300, 12 GET, 13 note,
# 14 write 0x300, 15 CLEAR of pages 0x100+64 (gfns 0x300-0x33f), 16 note, 17 write 0x300, 18 GET, 19 note.
CLEAR_LESSON = load_builtin_text("clear-dirty-log")


def clear_questions(mode: str) -> tuple[Question | None, ...]:
    return questions("modern", CLEAR_LESSON, (("dirty_log_mode", mode),))


def test_clear_dirty_log_in_bitmap_mode_finds_nothing_to_rearm() -> None:
    """§3.6: GET already cleared and re-protected 0x250 and 0x260, so the first CLEAR re-protects nothing;
    0x300, written after the second GET, is re-protected by the second."""
    first, second = clear_questions("bitmap")[8], clear_questions("bitmap")[15]
    assert first is not None and first.kind == "clear"
    assert first.prompt.endswith("Will it write-protect any page?") and first.correct == "no"
    assert "GET_DIRTY_LOG already cleared the bits" in first.explanation
    assert second is not None and second.correct == "yes"
    assert "gfn 0x300, mapped by L1[0x100]" in second.prompt


def test_clear_dirty_log_with_manual_protection_rearms_the_chunk() -> None:
    """§5.4: GET only copies, so 0x250 is still writable before the CLEAR of its chunk, which
    re-protects it."""
    found = clear_questions("manual_clear")
    get = found[6]
    assert get is not None and get.correct == "yes" and "only copies the bitmap" in get.explanation
    clear = found[8]
    assert clear is not None and clear.correct == "yes"
    assert "gfn 0x250, mapped by L1[0x50], the 4K spte mapping gfn 0x250 (R W X" in clear.prompt


def test_clear_dirty_log_under_initially_set_splits_the_huge_page() -> None:
    """§5.4: nothing was protected at enable; CLEAR splits the 2M spte and write-protects its chunk."""
    clear = clear_questions("initially_set")[8]
    assert clear is not None and clear.correct == "yes"
    assert "the 2M spte mapping gfns 0x200–0x3ff (R W X PS" in clear.prompt
    assert "now mapped by L1[0x40], read-only" in clear.explanation


def test_a_refused_ioctl_is_asked_and_answered_by_its_failure() -> None:
    """Contract: under the dirty ring GET and CLEAR fail with ENXIO; reset_dirty_ring fails with EINVAL in
    any bitmap mode. The question is the one a working ioctl gets; its answer is "no"."""
    found = clear_questions("ring")
    get = found[6]
    assert get is not None and get.kind == DIRTY_LOG and get.correct == "no"
    assert "Will it report gfn 0x250, which the guest wrote at step #4?" in get.prompt
    assert "KVM_GET_DIRTY_LOG: ENXIO" in get.explanation
    clear = found[8]
    assert clear is not None and clear.correct == "no" and "KVM_CLEAR_DIRTY_LOG: ENXIO" in clear.explanation
    reset = small_scenario([{"op": "enable_dirty_log", "slot": 1}, {"op": "write", "gfn": "0x250"},
                            {"op": "reset_dirty_ring"}])  # fmt: skip
    refused = questions("modern", reset)[2]
    assert refused is not None and refused.correct == "no" and "EINVAL" in refused.explanation
    harvested = questions("modern", reset, (("dirty_log_mode", "ring"),))[2]
    assert harvested is not None and harvested.kind == DIRTY_LOG and harvested.correct == "yes"
    assert "dirty ring" in harvested.prompt and "pushed it to its vCPU's dirty ring" in harvested.explanation


def test_judging_and_the_score() -> None:
    question = asked("lazy-buggy", 4)
    right, wrong = judge(question, "fast"), judge(question, "bail")
    assert right.right and not wrong.right
    assert wrong.answer_label.startswith("The fast path gives up")
    assert wrong.correct_label == "Fast fault: fixed locklessly"
    assert scored((3, 4), right) == (4, 5)
    assert scored((3, 4), wrong) == (3, 5)
    assert scored((3, 4), None) == (3, 4)
    assert isinstance(right, Feedback)


def test_outcomes_from_counts_when_untraced() -> None:
    def result(fast: int, slow: int) -> StepResult:
        return StepResult(
            0, WriteStep(gfn=0), {"fast": fast, "slow": slow}, [], None, 0, [], None, None, None
        )

    assert [single_outcome(result(f, s)) for f, s in ((0, 0), (1, 0), (0, 1))] == ["none", "fast", "slow"]
    assert [many_outcome({"fast": f, "slow": s}) for f, s in ((0, 0), (2, 0), (0, 2), (1, 1))] == [
        "none", "fast", "slow", "both",
    ]  # fmt: skip


def test_leaf_before_reads_the_old_values() -> None:
    """After lazy's decisive write, the walk with the step's old values still ends at the 2M spte."""
    scenario = parse_scenario(load_builtin_text(EXAMPLE))
    policy = make_policy("lazy")
    run = Run(("test", policy), scenario, policy, Settings())
    shown = run.at(5)
    leaf = leaf_before(shown.sim.kvm, shown.touched, 0x250)
    assert leaf is not None
    assert (leaf.level, leaf.sp.gfn, leaf.index, leaf.old) == (2, 0, 1, 0x80000FF5)
    assert leaf.new & 0x80 == 0  # now a pointer to the new level-1 table
    before = leaf_before(shown.sim.kvm, {}, 0x250)
    assert before is not None and (before.level, before.index) == (1, 0x50)


# ---------------------------------------------------------------------------------------------------------
# The player's predict mode


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), follow_redirects=False)


def url(preset: str, step: int, **params: str) -> str:
    tail = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{PLAY}&variant={preset}&step={step}{tail}"


def query(href: str | None) -> list[tuple[str, str]]:
    assert href is not None
    return parse_qsl(urlsplit(href).query)


def inputs(doc: Page, form: str) -> list[tuple[str | None, str | None]]:
    """The (name, value) of every input of the form with id `form`, in order."""
    found = [e for e in doc.elements if e.tag == "input" and e.within("id", form)]
    return [(e.get("name"), e.get("value")) for e in found]


def the(doc: Page, **attrs: str | None) -> Any:
    found = doc.find(**attrs)
    assert len(found) == 1, (attrs, len(found))
    return found[0]


def test_a_question_before_the_step(client: TestClient) -> None:
    doc = page(client, url("lazy-buggy", 4, mode="predict", score="3-4"))
    form = the(doc, id="predict-form")
    assert form.get("data-question") == "fault" and form.get("data-question-step") == "4"
    assert "vCPU 0 writes gfn 0x250" in form.text
    assert inputs(doc, "predict-form") == [
        ("scenario", EXAMPLE), ("variant", "lazy-buggy"), ("step", "5"), ("mode", "predict"),
        ("score", "3-4"),
    ]  # fmt: skip
    choices = [(e.get("name"), e.get("value")) for e in doc.find(data_choice=None)]
    assert choices == [("answer", k) for k in ("none", "fast", "bail", "slow")]
    # Nothing on the page says which one is right before it is answered.
    assert not doc.find(data_correct=None) and not doc.find(data_feedback=None)
    assert the(doc, data_score=None).get("data-score") == "3-4"
    # The other panels show the state before the step: the read-only 2M spte.
    (large,) = doc.find(data_spte=None, data_level="0x2", data_sp_gfn="0x0", data_index="0x1")
    assert large.get("data-value") == "0x80000ff5"


def test_forward_waits_for_the_answer(client: TestClient) -> None:
    doc = page(client, url("lazy-buggy", 4, mode="predict", score="3-4"))
    for name in ("next", "last"):
        link = the(doc, data_nav=name)
        assert link.get("aria-disabled") == "true"
        assert dict(query(link.get("href")))["step"] == "4"
    back = the(doc, data_nav="prev")
    assert query(back.get("href"))[-2:] == [("mode", "predict"), ("score", "3-4")]


@pytest.mark.parametrize(("answer", "right", "score"), [("fast", "right", "4-5"), ("bail", "wrong", "3-5")])
def test_the_answer_and_the_state_after(client: TestClient, answer: str, right: str, score: str) -> None:
    doc = page(client, url("lazy-buggy", 5, mode="predict", answer=answer, score="3-4"))
    feedback = the(doc, data_feedback=None)
    assert (feedback.get("data-feedback"), feedback.get("data-answer")) == (right, answer)
    assert feedback.get("data-correct") == "fast"
    assert "Right" in feedback.text if right == "right" else "Wrong" in feedback.text
    assert "The answer to #5: Fast fault: fixed locklessly" in feedback.text
    assert "gfn 0x200 marked dirty, not gfn 0x250" in feedback.text
    assert the(doc, data_score=None).get("data-score") == score
    # The state after the step, its change marked; then the next question, carrying the new score.
    (large,) = doc.find(data_spte=None, data_level="0x2", data_sp_gfn="0x0", data_index="0x1")
    assert (large.get("data-value"), large.get("data-changed")) == ("0x80000ff7", "1")
    assert the(doc, id="predict-form").get("data-question-step") == "5"
    hidden = dict(inputs(doc, "predict-form"))
    assert (hidden["step"], hidden["score"]) == ("6", score)
    assert the(doc, id="modes").get("data-score-next") == score
    # Links to other states carry the new score, and no answer.
    prev = query(the(doc, data_nav="prev").get("href"))
    assert ("score", score) in prev and "answer" not in dict(prev)
    # This page's own address keeps the answer and the score before it.
    share = the(doc, id="share-url").get("value")
    assert share.endswith(f"&step=5&mode=predict&answer={answer}&score=3-4")


def test_the_final_score_and_play_again(client: TestClient) -> None:
    doc = page(client, url("lazy-buggy", STEPS, mode="predict", answer="yes", score="8-11"))
    assert the(doc, data_feedback=None).get("data-feedback") == "right"
    final = the(doc, data_predict_final=None)
    assert "Finished: 9 of 12 right" in " ".join(final.text.split())
    score = the(doc, data_score=None)
    assert (score.get("data-right"), score.get("data-asked")) == ("9", "12")
    again = query(the(doc, data_action="predict-again").get("href"))
    assert again == [
        ("scenario", EXAMPLE), ("variant", "lazy-buggy"), ("step", "0"), ("mode", "predict"),
        ("score", "0-0"),
    ]  # fmt: skip
    leave = query(the(doc, data_action="predict-leave").get("href"))
    assert leave == [("scenario", EXAMPLE), ("variant", "lazy-buggy"), ("step", str(STEPS))]
    assert not doc.find(id="predict-form")


def test_a_whole_game_adds_up(client: TestClient) -> None:
    """Answer every question of lazy-buggy, every third one wrong, following the pages' own forms."""
    score = (0, 0)
    for index, correct in enumerate(EXPECTED["lazy-buggy"]):
        doc = page(client, url("lazy-buggy", index, mode="predict", score=f"{score[0]}-{score[1]}"))
        keys = [e.get("value") for e in doc.find(data_choice=None)]
        answer = correct if index % 3 else next(k for k in keys if k != correct)
        assert answer is not None
        before = f"{score[0]}-{score[1]}"
        doc = page(client, url("lazy-buggy", index + 1, mode="predict", answer=answer, score=before))
        score = (score[0] + (answer == correct), score[1] + 1)
        assert the(doc, data_score=None).get("data-score") == f"{score[0]}-{score[1]}"
    assert score == (8, 12)


def test_the_toolbar_switches(client: TestClient) -> None:
    doc = page(client, url("lazy", 3))
    switch = the(doc, data_action="predict")
    assert switch.get("data-state") == "off"
    assert query(switch.get("href"))[-3:] == [("step", "3"), ("mode", "predict"), ("score", "0-0")]
    doc = page(client, url("lazy", 3, mode="predict", score="1-2"))
    switch = the(doc, data_action="predict")
    assert switch.get("data-state") == "on"
    assert "mode" not in dict(query(switch.get("href")))
    present = the(doc, data_action="present")
    assert query(present.get("href"))[-3:] == [("mode", "predict"), ("score", "1-2"), ("present", "1")]


def test_a_step_without_a_question_continues(client: TestClient) -> None:
    code = encode_scenario(parse_scenario(NO_QUESTIONS))
    base = f"/play?s={code}&variant=lazy"
    doc = page(client, f"{base}&step=0&mode=predict&score=0-0")
    assert not doc.find(id="predict-form")
    assert "Nothing mapped yet." in the(doc, data_question="none").text
    cont = query(the(doc, data_action="predict-continue").get("href"))
    assert ("step", "1") in cont and ("score", "0-0") in cont
    nxt = the(doc, data_nav="next")
    assert nxt.get("aria-disabled") is None and dict(query(nxt.get("href")))["step"] == "1"
    # An answer to a step that asked nothing is refused.
    response = client.get(f"{base}&step=1&mode=predict&answer=yes&score=0-0")
    assert response.status_code == 400 and "asks no question" in response.text


def test_partial_responses_in_predict_mode(client: TestClient) -> None:
    target = url("lazy", 5, mode="predict", answer="bail", score="2-4")
    response = client.get(target, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert response.headers["HX-Push-Url"] == f"{PLAY}&variant=lazy&step=5&mode=predict&answer=bail&score=2-4"
    # The page varies on HX-Request; compression (app/wire.py) adds Accept-Encoding.
    assert {name.strip() for name in response.headers["Vary"].split(",")} == {"HX-Request", "Accept-Encoding"}
    doc = Page(response.text)
    for block in ("panel-narration", "modes", "stepnav", "position", "panel-tree", "scrubber"):
        assert the(doc, id=block).get("hx-swap-oob") == "true", block
    assert the(doc, data_feedback=None).get("data-feedback") == "right"
    # The pushed URL loads the same panel as a whole page.
    full = page(client, response.headers["HX-Push-Url"])
    assert the(full, data_feedback=None).text == the(doc, data_feedback=None).text
    assert the(full, id="predict-form").text == the(doc, id="predict-form").text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("&step=4&mode=foo", "mode='foo'"),
        ("&step=4&mode=predict&answer=%3Cscript%3E", "answer='<script>'"),
        ("&step=4&mode=predict&answer=" + "x" * 40, "an answer is one choice's key"),
        ("&step=5&mode=predict&answer=maybe", "not a choice of step #5's question (choices: none, fast,"),
        ("&step=0&mode=predict&answer=fast", "asks no question"),
        ("&step=5&answer=fast", "answer= belongs to predict mode"),
        ("&step=5&score=1-1", "score= belongs to predict mode"),
        ("&step=5&mode=predict&score=abc", "score='abc'"),
        ("&step=5&mode=predict&score=5-3", "more right answers"),
        ("&step=5&mode=predict&score=1-2-3", "RIGHT-ASKED"),
        ("&step=5&focus=nope", "focus='nope'"),
        ("&step=5&present=yes", "present='yes'"),
        ("&step=5&mode=predict&mode=predict", "mode is given 2 times"),
    ],
)
def test_bad_mode_parameters_are_a_400(client: TestClient, params: str, message: str) -> None:
    response = client.get(f"{PLAY}&variant=lazy{params}")
    assert response.status_code == 400, response.text[:300]
    text = " ".join(re.sub(r"<[^>]+>", " ", response.text).split()).replace("&#39;", "'").replace("&lt;", "<")
    assert message in text.replace("&gt;", ">")


# ---------------------------------------------------------------------------------------------------------
# Presentation mode


def test_presentation_mode_renders_one_panel_enlarged(client: TestClient) -> None:
    doc = page(client, url("lazy-buggy", 5, present="1"))
    (body,) = [e for e in doc.elements if e.tag == "body"]
    assert "is-present" in (body.get("class") or "").split()
    assert [e.get("data-panel") for e in doc.find(data_focused="1")] == ["tree"]
    picker = [e for e in doc.find(data_focus=None) if e.tag == "a"]
    assert [e.get("data-focus-key") for e in picker] == [str(k) for k in range(1, 9)]
    assert [e.get("data-focus") for e in picker if e.get("aria-current") == "true"] == ["tree"]
    bitmap = next(e for e in picker if e.get("data-focus") == "bitmap")
    assert query(bitmap.get("href"))[-3:] == [("step", "5"), ("present", "1"), ("focus", "bitmap")]
    # The notes in big print are the narration panel, still there.
    assert the(doc, data_panel="narration")
    toggle = the(doc, data_action="present")
    assert toggle.get("data-state") == "on" and "present" not in dict(query(toggle.get("href")))


def test_presentation_keeps_its_panel_while_stepping(client: TestClient) -> None:
    doc = page(client, url("lazy-buggy", 5, present="1", focus="bitmap"))
    assert [e.get("data-panel") for e in doc.find(data_focused="1")] == ["bitmap"]
    nxt = query(the(doc, data_nav="next").get("href"))
    assert nxt[-3:] == [("step", "6"), ("present", "1"), ("focus", "bitmap")]
    response = client.get(url("lazy-buggy", 6, present="1", focus="bitmap"), headers={"HX-Request": "true"})
    assert response.headers["HX-Push-Url"].endswith("&step=6&present=1&focus=bitmap")
    partial = Page(response.text)
    assert [e.get("data-panel") for e in partial.find(data_focused="1")] == ["bitmap"]
    # The default panel is left out of the address; out of presentation mode focus= is dropped.
    response = client.get(url("lazy", 2, present="1", focus="tree"), headers={"HX-Request": "true"})
    assert response.headers["HX-Push-Url"].endswith("&step=2&present=1")
    response = client.get(url("lazy", 2, focus="trace"), headers={"HX-Request": "true"})
    assert response.headers["HX-Push-Url"].endswith("&variant=lazy&step=2")


def test_presentation_and_predict_together(client: TestClient) -> None:
    doc = page(client, url("lazy", 4, mode="predict", score="2-3", present="1", focus="trace"))
    modes = [("mode", "predict"), ("score", "2-3"), ("present", "1"), ("focus", "trace")]
    assert inputs(doc, "predict-form")[-5:] == [("step", "5"), *modes]
    # The forms that stay on the page keep the modes (keys.js keeps them in line after each swap).
    assert inputs(doc, "variant-form")[-4:] == modes
    assert inputs(doc, "whatif")[-4:] == modes
    assert the(doc, id="variant-form").get("data-sync") == "step spte mode score present focus live"


def test_the_what_if_redirect_keeps_the_modes(client: TestClient) -> None:
    response = client.get(
        f"{PLAY}&variant=lazy&step=4&mode=predict&score=2-3&present=1&sw.fast_pf_level_guard=none"
    )
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.endswith("&step=4&policy=fast_pf_level_guard=none&mode=predict&score=2-3&present=1")


@pytest.mark.parametrize(
    "target",
    [
        url("lazy-buggy", 5, mode="predict", answer="fast", score="0-1"),
        url("lazy", 3, present="1", focus="counters"),
        url("zap", STEPS, mode="predict", answer="no", score="3-3", present="1"),
    ],
)
def test_mode_pages_have_no_inline_script_or_style(client: TestClient, target: str) -> None:
    html = client.get(target).text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert not re.search(r"\son[a-z]+=", html)
    assert not re.search(r"\sstyle=", html) and "<style" not in html
    assert "hx-on" not in html
