"""The timeline strip's data (app/views/timeline.py) and its place in the pages.

Markers are read off the runs' step records; the expectations come from what each step is (an op that
harvests the dirty log, a record's fault counts) and, for the worked example, from kvm-mmu.md §7.2.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.records import StepRecord
from app.views.timeline import (
    FULL_MARKS,
    GLYPH_FAST,
    GLYPH_HARVEST,
    GLYPH_LOST,
    GLYPH_QUIET,
    GLYPH_SLOW,
    GLYPH_UNKNOWN,
    GLYPH_VIOLATION,
    SPANS,
    WINDOW,
    Mark,
    Span,
    mark_of,
    timeline_view,
    window_of,
)

EXAMPLE = "worked-example"


def record(fast: int = 0, slow: int = 0, violations: tuple[str, ...] = (), lost: int = 0) -> StepRecord:
    return StepRecord(fast, slow, 0, 0, None, 0, None, violations, 1, lost)


def test_a_marker_says_each_kind_of_event_by_glyph_and_in_words() -> None:
    slow = mark_of(3, "write", record(fast=1, slow=1), "write gfn 0x250")
    assert slow.fault == "slow" and slow.glyphs == GLYPH_SLOW
    assert slow.text == "step #3: write gfn 0x250; 1 fast and 1 slow faults"
    fast = mark_of(1, "write", record(fast=1))
    assert fast.fault == "fast" and fast.glyphs == GLYPH_FAST and "1 fast fault" in fast.text
    harvest = mark_of(8, "migrate_round", record(violations=("written_not_logged",) * 3))
    assert harvest.harvest and harvest.glyphs == GLYPH_HARVEST + GLYPH_VIOLATION
    assert "dirty log harvested" in harvest.text and "3 violations (written_not_logged)" in harvest.text
    verdict = mark_of(12, "migrate_end", record(lost=4))
    assert verdict.glyphs == GLYPH_HARVEST + GLYPH_LOST and verdict.text.endswith("verdict: 4 pages lost")
    assert mark_of(2, "read", record()).glyphs == GLYPH_QUIET
    # A harvest is the op's doing: get_dirty_log and reset_dirty_ring are harvests, clear_dirty_log is not.
    assert mark_of(1, "get_dirty_log", record()).harvest and mark_of(1, "reset_dirty_ring", record()).harvest
    assert not mark_of(1, "clear_dirty_log", record()).harvest
    unknown = mark_of(5, "write", None)
    assert not unknown.known and unknown.glyphs == GLYPH_UNKNOWN and "not run yet" in unknown.text


def test_a_short_scenario_has_every_step_in_every_lane() -> None:
    ops = ["read", "write", "migrate_begin", "migrate_round", "migrate_end"]
    records = [record(slow=1), record(fast=1), record(), record(), record(lost=2)]
    view = timeline_view(
        2, len(ops), ops, [("zap", False, "", records), ("lazy", True, "this player", records[:3])]
    )
    assert not view.windowed and (view.first, view.last) == (1, 5)
    for lane in view.lanes:
        assert [item.n for item in lane.items if isinstance(item, Mark)] == [1, 2, 3, 4, 5]
    # A lane whose run has not reached a step says so rather than guessing.
    lazy = view.lanes[1]
    assert lazy.own and [m.known for m in lazy.items if isinstance(m, Mark)] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_a_long_scenario_keeps_a_window_of_markers_and_folds_the_rest() -> None:
    total = 10_000
    ops = ["write"] * total
    ops[6999] = "migrate_end"
    records = [record() for _ in range(total)]
    records[6999] = record(lost=3)
    records[123] = record(slow=1)
    records[130] = record(violations=("written_not_logged",))
    view = timeline_view(5_000, total, ops, [("zap", False, "", records), ("lazy", False, "", records)])
    assert view.windowed
    assert (view.first, view.last) == (5_000 - WINDOW, 5_000 + WINDOW)
    lane = view.lanes[0]
    marks = [item for item in lane.items if isinstance(item, Mark)]
    spans = [item for item in lane.items if isinstance(item, Span)]
    assert [m.n for m in marks] == list(range(view.first, view.last + 1))
    # Bounded: the window and at most SPANS spans, plus the two cut by the window's edges.
    assert len(spans) <= SPANS + 2
    # Every step is covered exactly once, in order.
    covered: list[int] = []
    for item in lane.items:
        covered.extend([item.n] if isinstance(item, Mark) else range(item.first, item.last + 1))
    assert covered == list(range(1, total + 1))
    # A span jumps to its most telling step: the violation over the earlier slow fault; the lost pages.
    first = next(s for s in spans if s.first <= 124 <= s.last)
    assert first.target == 131 and first.violations == 1 and first.slow == 1
    verdict = next(s for s in spans if s.first <= 7000 <= s.last)
    assert verdict.target == 7000 and verdict.lost == 3 and GLYPH_LOST in verdict.glyphs
    # The lanes fold at the same places, so their spans line up.
    assert [(s.first, s.last) for s in spans] == [
        (s.first, s.last) for s in view.lanes[1].items if isinstance(s, Span)
    ]


def test_the_window_stays_inside_the_scenario() -> None:
    assert window_of(0, 40) == (1, 40)
    assert window_of(0, FULL_MARKS + 1) == (1, 2 * WINDOW + 1)
    assert window_of(FULL_MARKS + 1, FULL_MARKS + 1) == (FULL_MARKS + 1 - 2 * WINDOW, FULL_MARKS + 1)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), follow_redirects=False)


def _lane(html: str, name: str) -> str:
    match = re.search(rf'data-lane="{name}".*?</div>', html, re.S)
    assert match, name
    return match.group(0)


def test_the_player_has_a_lane_per_preset_and_swaps_it_when_stepping(client: TestClient) -> None:
    html = client.get(f"/play?scenario={EXAMPLE}&variant=lazy-buggy&step=5").text
    lanes = re.findall(r'data-lane="([^"]+)"', html)
    assert lanes == ["zap", "lazy-buggy", "lazy", "modern"]
    buggy = _lane(html, "lazy-buggy")
    assert 'data-own="1"' in buggy and "this player" in buggy
    assert re.findall(r'data-mark="(\d+)"', buggy) == [str(n) for n in range(1, 13)]
    # §7.2: the decisive write is a fast fault under lazy-buggy, and its verdict loses four pages.
    assert re.search(r'data-mark="5" data-fault="fast"[^>]*aria-current="step"', buggy)
    assert 'data-mark="12" data-harvest="1" data-lost-pages="4"' in buggy
    assert "data-lost-pages" not in _lane(html, "lazy")
    # A marker links like the other step links of the player.
    assert 'href="/play?scenario=worked-example&amp;variant=lazy-buggy&amp;step=8"' in buggy
    partial = client.get(
        f"/play?scenario={EXAMPLE}&variant=lazy-buggy&step=6", headers={"HX-Request": "true"}
    )
    assert re.search(r'<section id="timeline"[^>]*hx-swap-oob="true"', partial.text)


def test_compare_has_a_lane_per_compared_preset(client: TestClient) -> None:
    html = client.get(f"/compare?scenario={EXAMPLE}&variants=zap,lazy&step=3").text
    assert re.findall(r'data-lane="([^"]+)"', html) == ["zap", "lazy"]
    assert 'href="/compare?scenario=worked-example&amp;variants=zap,lazy&amp;step=7"' in html
    partial = client.get(
        f"/compare?scenario={EXAMPLE}&variants=zap,lazy&step=4", headers={"HX-Request": "true"}
    )
    assert re.search(r'<section id="timeline"[^>]*hx-swap-oob="true"', partial.text)


def test_a_long_share_code_makes_the_markers_buttons_of_one_form(client: TestClient) -> None:
    scenario = client.get(f"/api/scenarios/{EXAMPLE}").json()
    code = client.post("/api/encode", json={"scenario": scenario}).json()["code"]
    html = client.get(f"/compare?s={code}&step=2").text
    # A fixed number of times (the step links, the share box, the players, the forms), not once per marker.
    assert html.count(code) <= 20 < 4 * 12
    assert 'form id="timeline-form"' in html
    assert len(re.findall(r'<button type="submit" form="timeline-form" name="step"', html)) == 4 * 12
    # The trees' sptes are buttons too, each of its column's own form (the column's preset).
    assert '<form id="inspect-form-lazy-buggy"' in html and 'form="inspect-form-lazy-buggy"' in html


def test_the_strip_runs_other_presets_only_within_its_share_of_the_budget() -> None:
    """A scenario whose four whole runs do not fit the strip's share: every lane is known to the step shown
    while four runs that far fit; past that, only the player's own lane, which the page runs anyway."""
    from app.settings import Settings
    from app.sources import SourceCache

    source = SourceCache(4).resolve(EXAMPLE, None)
    per_lane = source.work_to(source.total)
    # Room for one whole run of the example in the strip's share, not for four.
    budget = per_lane * 4 * 6 - 1
    client = TestClient(create_app(Settings(run_budget=budget)), follow_redirects=False)
    assert source.work_to(3) * 4 <= budget // 6  # the first steps are cheap: known to the step shown
    html = client.get(f"/play?scenario={EXAMPLE}&variant=lazy&step=3").text
    for lane in ("zap", "lazy-buggy", "lazy", "modern"):
        tags = re.findall(r"<a [^>]*data-mark=[^>]*>", _lane(html, lane))
        assert len(tags) == source.total, lane
        known = [int(re.findall(r'data-mark="(\d+)"', tag)[0]) for tag in tags if 'data-known="0"' not in tag]
        assert known == [1, 2, 3], lane
    html = client.get(f"/play?scenario={EXAMPLE}&variant=lazy&step={source.total}").text
    for lane in ("zap", "lazy-buggy", "lazy", "modern"):
        tags = re.findall(r"<a [^>]*data-mark=[^>]*>", _lane(html, lane))
        unknown = [tag for tag in tags if 'data-known="0"' in tag]
        assert len(unknown) == (0 if lane == "lazy" else source.total), lane


def test_a_long_scenario_draws_a_bounded_strip(client: TestClient) -> None:
    scenario = client.get(f"/api/scenarios/{EXAMPLE}").json()
    scenario["steps"] = [
        {"op": "write", "gfn": "0x250"},
        *({"op": "note", "text": "…"} for _ in range(2_999)),
    ]
    code = client.post("/api/encode", json={"scenario": scenario}).json()["code"]
    html = client.get(f"/play?s={code}&variant=lazy&step=1500").text
    for lane in ("zap", "lazy-buggy", "lazy", "modern"):
        body = _lane(html, lane)
        marks = [int(n) for n in re.findall(r'data-mark="(\d+)"', body)]
        assert marks == list(range(1500 - WINDOW, 1500 + WINDOW + 1)), lane
        spans = re.findall(r'data-span="(\d+)-(\d+)"', body)
        assert 0 < len(spans) <= SPANS + 2
        # The first span holds the one write: a slow fault, and the span jumps to it.
        assert spans[0][0] == "1" and re.search(r'value="1" class="tl-span f-slow"', body)
        assert 'value="1500" class="tl-mark is-current"' in body
    assert len(html) < 400_000


def test_predict_mode_does_not_give_the_next_steps_away(client: TestClient) -> None:
    html = client.get(f"/play?scenario={EXAMPLE}&variant=lazy&step=4&mode=predict&score=0-0").text
    for lane in ("zap", "lazy-buggy", "lazy", "modern"):
        tags = re.findall(r"<a [^>]*data-mark=[^>]*>", _lane(html, lane))
        unknown = [int(re.findall(r'data-mark="(\d+)"', tag)[0]) for tag in tags if 'data-known="0"' in tag]
        assert unknown == list(range(5, 13)), lane
        assert "data-fault" not in "".join(tags[4:]), lane
