"""What users read first: the landing page's story of the worked example, whose links open where each
kernel parts from the other (computed from the runs, checked here against kvm-mmu.md §7.2); the lessons
in the library's teaching order; the key to the presets, where each names the kernel it stands for in the
words its description (engine/policy.py PRESET_DESCRIPTIONS) begins with; and README's switch table,
which must be the presets' own values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PRESET_NAMES, scenario_dict
from fastapi.testclient import TestClient
from test_app_routes import Element, Page, page

from app.main import create_app
from app.settings import Settings
from cli.main import main as cli_main
from engine.policy import PRESET_DESCRIPTIONS, PRESET_KERNELS, PRESETS, SWITCH_VALUES
from scenarios import LESSONS, builtin_names

# The kernel each preset stands for, as the spec names it (§0 "Which release has what", §4.1, §5.7).
KERNELS = {
    "zap": "Linux 3.14",
    "lazy-buggy": "caf6900f (early 2013, a 3.9-era tree; reverted before v3.9)",
    "lazy": "Linux 3.16.0",
    "modern": "upstream Linux 6.13 and later",
}


@pytest.fixture(scope="module")
def landing() -> Page:
    return page(TestClient(create_app()), "/")


def test_each_kernel_is_how_the_preset_description_begins() -> None:
    assert list(PRESET_KERNELS) == PRESET_NAMES
    for name, kernel in PRESET_KERNELS.items():
        assert PRESET_DESCRIPTIONS[name].startswith(kernel), name
        assert KERNELS[name] in kernel, name


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_the_legend_names_each_preset_s_kernel(landing: Page, name: str) -> None:
    (row,) = landing.find(data_preset=name, title=None)
    assert row.tag == "li" and row.within("class", "preset-legend")
    assert " ".join(row.text.split()) == f"{name} {PRESET_KERNELS[name]}"
    assert row.get("title") == PRESET_DESCRIPTIONS[name]


def test_the_landing_page_says_what_6_13_does(landing: Page) -> None:
    (intro,) = landing.find(id="h-intro")
    paragraphs = (e.text for e in landing.elements if e.tag == "p" and e.within("class", "intro panel"))
    text = " ".join(" ".join(paragraphs).split())  # as a browser shows it: white space collapsed
    assert "6.13" in text and "put them back in place" in text and "is logged there as in 3.x" in text
    assert intro.text == "One 2 MiB spte, four kernels"
    (foot,) = [e for e in landing.elements if e.tag == "footer"]
    assert "upstream Linux 6.13 and later" in foot.text
    for stale in ("6.x kernel", "read-only read faults", "today's"):
        assert stale not in text + foot.text


def test_readme_switch_table_is_the_presets_own() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Presets") : readme.index("## Limits")]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    assert list(rows) == list(SWITCH_VALUES), "one row per switch, in engine/policy.py's order"
    for switch, values in rows.items():
        expected = [PRESETS[name].as_json()[switch] for name in PRESET_NAMES]
        assert values == [str(v).lower() if isinstance(v, bool) else v for v in expected], switch


# ---------------------------------------------------------------------------------------------------------
# The story first, the lessons in teaching order

EXAMPLE = "worked-example"


def _example_index(op: str, gfn: int | None = None, after: str | None = None) -> int:
    """The index in worked-example.json of the first `op` (on `gfn`), after the first `after` op if named."""
    steps = scenario_dict(EXAMPLE)["steps"]
    start = 0 if after is None else next(i for i, s in enumerate(steps) if s["op"] == after) + 1
    for index in range(start, len(steps)):
        step = steps[index]
        if step["op"] == op and (gfn is None or int(str(step.get("gfn")), 0) == gfn):
            return index
    raise LookupError(op)


# kvm-mmu.md §7.2, in the player's `step=` (the state after that many scenario steps):
# step 4, the read of 0x2c0 with logging on, faults (and marks the page) only under zap;
READ_FAULT = _example_index("read", 0x2C0, after="migrate_begin") + 1
# step 5, "the decisive step", the write to 0x250: caf6900f's fast path makes the 2M spte writable and
# logs 0x200, the fix drops it (the slow path), and 6.13 takes a fast fault on the 4K spte the split left.
DECISIVE = _example_index("write", 0x250, after="migrate_begin") + 1


def _main_elements(landing: Page) -> list[Element]:
    return [e for e in landing.elements if e.within("id", "main")]


def test_the_story_comes_before_everything_else(landing: Page) -> None:
    main = _main_elements(landing)
    first_section = next(e for e in main if e.tag == "section")
    assert first_section.get("class") == "intro panel"
    (story,) = landing.find(data_story=EXAMPLE)
    assert story.tag == "ol" and story.within("class", "intro panel")
    chapters = [e.get("data-story-step") for e in landing.find(data_story_step=None)]
    assert chapters == ["zap", "lazy-buggy", "lazy", "modern"]  # before, the bug, the fix, 6.13
    # Every chapter and the Start here link come before the first lesson card.
    position = {id(e): i for i, e in enumerate(landing.elements)}
    first_card = landing.find(data_scenario=None)[0]
    (start,) = landing.find(data_start_here=None)
    assert position[id(start)] < position[id(first_card)]


def test_start_here_opens_the_decisive_write_side_by_side(landing: Page) -> None:
    starts = landing.find(data_start_here=None)
    assert len(starts) == 1, "one Start here link"
    assert DECISIVE == 5  # §7.2 numbers it step 5 too
    assert starts[0].tag == "a" and starts[0].get("href") == f"/compare?scenario={EXAMPLE}&step={DECISIVE}"


@pytest.mark.parametrize(
    ("preset", "step"),
    [("zap", READ_FAULT), ("lazy-buggy", DECISIVE), ("lazy", DECISIVE), ("modern", DECISIVE)],
)
def test_each_chapter_links_where_its_kernel_parts(landing: Page, preset: str, step: int) -> None:
    (chapter,) = landing.find(data_story_step=preset)
    links = [e for e in landing.elements if e.tag == "a" and e.within("data-story-step", preset)]
    assert [a.get("href") for a in links] == [f"/play?scenario={EXAMPLE}&variant={preset}&step={step}"]
    assert chapter.tag == "li"


def test_the_lessons_come_in_the_declared_teaching_order(landing: Page) -> None:
    assert set(LESSONS) == set(builtin_names()), "every lesson file has its place in the order"
    cards = [str(e.get("data-scenario")) for e in landing.find(data_scenario=None) if e.tag == "article"]
    assert cards == list(LESSONS) == builtin_names()
    assert cards[0] == EXAMPLE
    # The 6.13 lesson and the 1 GiB one (the heaviest) come after every lesson of the 2014 story.
    assert cards.index("todays-kernel") > cards.index("migration-verdict")
    assert cards[-1] == "one-gig-page"
    assert cards != sorted(cards)


def test_the_api_and_the_cli_list_the_lessons_in_the_same_order(capsys: pytest.CaptureFixture[str]) -> None:
    listing = TestClient(create_app()).get("/api/scenarios").json()
    assert [item["name"] for item in listing] == list(LESSONS)
    assert cli_main(["scenarios", "--json"]) == 0
    assert [item["name"] for item in json.loads(capsys.readouterr().out)] == list(LESSONS)


def test_each_card_says_what_it_teaches_and_opens_where_something_happens(landing: Page) -> None:
    for name, teaches in LESSONS.items():
        (card,) = [e for e in landing.find(data_scenario=name) if e.tag == "article"]
        (said,) = [e for e in landing.find(data_teaches=None) if e.within("data-scenario", name)]
        assert " ".join(said.text.split()) == teaches
        step = int(card.get("data-key-step") or "-1")
        assert step >= 1, name
        hrefs = [e.get("href") for e in landing.elements if e.tag == "a" and e.within("data-scenario", name)]
        assert f"/play?scenario={name}&step={step}" in hrefs
        assert f"/compare?scenario={name}&step={step}" in hrefs
        assert f"/play?scenario={name}" in hrefs  # the lesson from its start (docs/ui-hooks.md)
    # The worked example's kernels part first at the read zap faults on (§7.2 step 4), and steps 1 to 3
    # fault, flush, mark and log alike.
    (example,) = [e for e in landing.find(data_scenario=EXAMPLE) if e.tag == "article"]
    assert example.get("data-key-step") == str(READ_FAULT)


def test_workshop_mode_tells_the_story_too() -> None:
    workshop = TestClient(create_app(Settings(workshop=True)))
    doc = page(workshop, "/")
    assert [e.get("href") for e in doc.find(data_start_here=None)] == [
        f"/compare?scenario={EXAMPLE}&step={DECISIVE}"
    ]


def test_a_card_marks_only_the_odd_one_out(landing: Page) -> None:
    # The worked example (spec §7.2): only lazy-buggy loses pages (4 of them) and breaks an invariant; the
    # three other presets agree on both, so lazy-buggy's two cells are marked, against the three of them,
    # and nothing is marked in their rows for those fields.
    card = [e for e in landing.find(data_differs="1") if e.within("data-scenario", EXAMPLE)]
    rows = {
        e: next(a.get("data-preset") for a in reversed(e.ancestors) if a.get("data-preset") is not None)
        for e in card
    }
    buggy = [e for e, preset in rows.items() if preset == "lazy-buggy"]
    lost = [e for e in buggy if "✕ 4" in e.text]
    violated = [e for e in buggy if "⚠" in e.text]
    assert len(lost) == 1 and len(violated) == 1
    for cell in lost + violated:
        assert cell.get("title") == "differs from zap, lazy, modern"
    others = [e for e, preset in rows.items() if preset != "lazy-buggy"]
    assert not [e for e in others if "✕" in e.text or "✓ 0" in e.text], "an agreeing majority is never marked"
