"""Big states read well: runs of alike tree rows, rmap heads, TLB entries and trace calls are one line
each, and every count and range such a line prints is checked here against what the engine did; the trace
shows each kernel function before the functions it called, as the kernel's call chain goes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest
from conftest import FORTY_2M
from fastapi.testclient import TestClient

from app.main import create_app
from app.replay import Shown
from app.settings import Settings
from app.views.text import bits_text, flags_text
from app.views.trace import trace_view
from engine.codec import encode_scenario
from engine.policy import make_policy
from engine.result import result_json
from engine.rmap import pte_list
from engine.scenario import WriteStep, parse_scenario
from engine.shadow_page import KvmMmuPage
from engine.simulation import Simulation, StepResult
from engine.spte import PT_PAGE_SIZE_MASK, PT_PRESENT_MASK, PT_WRITABLE_MASK, SpteMasks, flag_word
from engine.tdp_iter import find_shadow_page, spte_to_child_sp
from engine.trace import call_order, event_json
from scenarios import builtin_names, load_builtin_text

WRITE_STORM = "write-storm-2m"
STORM_STEP = 4  # the page after the step that writes 0x200-0x3ff, one store each


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), follow_redirects=False)


def run_to(scenario: str | dict[str, object], variant: str, step: int) -> tuple[Simulation, list[StepResult]]:
    """The engine's own run, fully traced, up to the page `step` (after `step` scenario steps)."""
    text = scenario if isinstance(scenario, dict) else json.loads(load_builtin_text(scenario))
    sim = Simulation(parse_scenario(text), make_policy(variant))
    return sim, [sim.step() for _ in range(step)]


def panel(html: str, name: str) -> str:
    start = html.index(f'id="panel-{name}"')
    return html[start : html.index("</section>", start)]


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


def cells(row: str) -> str:
    """A table row's cells as text, one space between cells."""
    return " ".join(text_of(cell) for cell in re.findall(r"<td>(.*?)</td>", row))


@dataclass
class Collapsed:
    count: int
    first: int
    last: int
    summary: str
    inner: str  # the markup of what opens
    repeats: int = 0  # for a repeating pattern, how many times it repeats

    @property
    def ghost_free(self) -> bool:
        return "removed this step" not in self.summary

    @property
    def rows(self) -> int:
        return len(re.findall(r"<li class=\"spte[^\"]*\" data-spte(?:-ghost)? ", self.inner))

    @property
    def rest(self) -> int:
        """The entries of the summarised run inside, as its text counts them."""
        runs = re.findall(r'<li class="run[^"]*"[^>]*>(.*?)</li>', self.inner)
        return sum(int(m.group(1)) for m in (re.search(r"\] (\d+) ", text_of(r)) for r in runs) if m)


def collapsed_rows(html: str) -> list[Collapsed]:
    pattern = (
        r'<li class="collapsed[^"]*" data-collapsed="(\d+)"'
        r' data-collapsed-range="0x([0-9a-f]+)-0x([0-9a-f]+)"(?: data-collapsed-repeats="(\d+)")?>'
        r"<details><summary>(.*?)</summary>(.*?)</ul></details></li>"
    )
    return [
        Collapsed(int(n), int(a, 16), int(b, 16), text_of(s), inner, int(r or 0))
        for n, a, b, r, s, inner in re.findall(pattern, html, re.S)
    ]


def table_markup(tree: str, level: int, gfn: int, freed: bool = False) -> str:
    """The markup of one table of the tree, up to the next table's head."""
    marker = f'data-sp-level="{level}" data-sp-gfn="{gfn:#x}"'
    starts = [m.start() for m in re.finditer(r'<div class="sp ', tree)]
    for i, start in enumerate(starts):
        head = tree[start : tree.index(">", start)]
        if marker in head and ('data-freed="1"' in head) == freed:
            return tree[start : starts[i + 1] if i + 1 < len(starts) else len(tree)]
    raise AssertionError(f"no table L{level} {gfn:#x} drawn")


def first_olds(results: list[StepResult]) -> dict[tuple[int, int, int], int]:
    """Each spte location the last step wrote, with its value before the step (its first write's old)."""
    olds: dict[tuple[int, int, int], int] = {}
    for change in results[-1].spte_changes or []:
        olds.setdefault((change.level, change.sp_gfn, change.index), change.old)
    return olds


# --- the page-table tree ------------------------------------------------------------------------------


def test_a_write_storm_step_collapses_its_new_leaves_into_one_row(client: TestClient) -> None:
    sim, results = run_to(WRITE_STORM, "lazy", STORM_STEP)
    # What the step did, from the engine: every level-1 spte under the table of 0x200 it made present.
    olds = first_olds(results)
    table = find_shadow_page(sim.kvm, 0x200, 1)
    assert table is not None
    new = sorted(
        i
        for (level, sp_gfn, i), old in olds.items()
        if (level, sp_gfn) == (1, 0x200) and not old & PT_PRESENT_MASK
    )
    assert new == list(range(512))  # one store to each page of 0x200-0x3ff, each a 4K spte of its own
    words = {flag_word(table.spt[i], sim.kvm.masks) for i in new}
    assert len(words) == 1

    html = panel(client.get(f"/play?scenario={WRITE_STORM}&variant=lazy&step={STORM_STEP}").text, "tree")
    # The step's first fault was at 0x200: the walk's leaf, L1[0], is drawn on its own (the walk is never
    # folded away), and the other 511 new leaves are one row.
    walked = re.search(r'data-walk-gfn="(0x[0-9a-f]+)"', html)
    assert walked is not None and int(walked.group(1), 16) == 0x200
    assert re.search(r'<li class="spte[^"]*" data-spte data-level="0x1" data-sp-gfn="0x200" data-index="0x0"'
                     r'[^>]*data-walk="1"', table_markup(html, 1, 0x200))  # fmt: skip
    folded = new[1:]
    (row,) = collapsed_rows(table_markup(html, 1, 0x200))
    assert (row.count, row.first, row.last) == (len(folded), folded[0], folded[-1])
    assert row.summary == f"[0x1–0x1ff] 511 × new 4K leaves, {bits_text(words.pop())}, gfns 0x201–0x3ff"
    # Opened, it holds the same 511: drawn one by one as far as the drawing budget goes, then summarised.
    assert row.rows + row.rest == 511 and row.rows > 0
    assert row.inner.count('data-changed="1"') == row.rows
    # The rows are still in the page (closed): every changed spte drawn is still a [data-changed] hook.
    assert html.count('data-changed="1"') >= row.rows


def test_removed_leaves_of_a_freed_table_collapse_with_their_count(client: TestClient) -> None:
    # Under modern, disabling logging recovers the 2M page in place: the level-1 table of 0x200 is freed
    # with its 512 leaves (spec §5.3).
    steps = json.loads(load_builtin_text("todays-kernel"))["steps"]
    step = next(i for i, s in enumerate(steps) if s["op"] == "disable_dirty_log") + 1
    sim, results = run_to("todays-kernel", "modern", step)
    olds = first_olds(results)
    removed = [
        (i, old)
        for (level, sp_gfn, i), old in olds.items()
        if (level, sp_gfn) == (1, 0x200) and old & PT_PRESENT_MASK
    ]
    assert len(removed) == 512

    html = panel(client.get(f"/play?scenario=todays-kernel&variant=modern&step={step}").text, "tree")
    freed = table_markup(html, 1, 0x200, freed=True)
    (row,) = collapsed_rows(freed)
    ghosts = re.findall(
        r'data-spte-ghost data-level="0x1" data-sp-gfn="0x200" data-index="0x([0-9a-f]+)"', row.inner
    )
    assert row.count == len(ghosts) == row.rows and row.rest == 0
    # Alike: the drawn ghosts' old values all had these flags, and the line says so.
    words = {flag_word(dict(removed)[int(i, 16)], sim.kvm.masks) for i in ghosts}
    assert len(words) == 1
    first, last = int(ghosts[0], 16), int(ghosts[-1], 16)
    assert row.summary == (
        f"[{first:#x}–{last:#x}] {row.count} × 4K leaves removed this step, were {bits_text(words.pop())},"
        f" gfns {0x200 + first:#x}–{0x200 + last:#x}"
    )
    # The rest of the table's removed leaves are counted after it: together, every leaf removed.
    more = re.search(r"(\d+) more removed", text_of(freed))
    assert more is not None and row.count + int(more.group(1)) == len(removed)


def test_removed_large_leaves_are_counted_as_the_step_removed_them() -> None:
    # Under zap (3.14) enabling logging zaps the 40 writable 2M leaves. With a budget of 20 sptes, some
    # are drawn as ghosts, the rest summarised; the collapsed line counts both.
    sim, results = run_to(FORTY_2M, "zap", 2)
    removed = sorted(
        i for (level, sp_gfn, i), old in first_olds(results).items() if level == 2 and old & PT_PRESENT_MASK
    )
    root_l2 = find_shadow_page(sim.kvm, 0, 2)
    assert root_l2 is not None and not any(root_l2.spt[i] & PT_PRESENT_MASK for i in removed)
    assert removed == list(range(40))
    client = TestClient(create_app(Settings(tree_sptes=20)), follow_redirects=False)
    html = panel(
        client.get(f"/play?s={encode_scenario(parse_scenario(FORTY_2M))}&variant=zap&step=2").text, "tree"
    )
    (row,) = collapsed_rows(html)
    assert row.count == len(removed) == row.rows + row.rest
    assert row.summary.startswith(f"[0x0–0x27] {len(removed)} × 2M leaves removed this step, were ")
    assert row.summary.endswith(", gfns 0x0–0x4fff")
    (rest,) = re.findall(r'<li class="run[^"]*"[^>]*>(.*?)</li>', row.inner)
    assert re.fullmatch(
        rf"\[0x[0-9a-f]+–0x27\] {row.rest} × 2M leaves removed this step, gfns .*", text_of(rest)
    )


def test_a_run_of_pointers_counts_the_tables_and_leaves_below_it() -> None:
    # Under modern, enabling logging splits each of the 40 2M leaves into a table of 512 read-only 4K
    # leaves. With a budget of 20 sptes, the pointers beyond it are one line, whose counts must be the
    # tables and leaves really below them.
    sim, _ = run_to(FORTY_2M, "modern", 2)
    l2 = find_shadow_page(sim.kvm, 0, 2)
    assert l2 is not None
    client = TestClient(create_app(Settings(tree_sptes=20)), follow_redirects=False)
    html = panel(
        client.get(f"/play?s={encode_scenario(parse_scenario(FORTY_2M))}&variant=modern&step=2").text, "tree"
    )
    runs = [text_of(r) for r in re.findall(r'<li class="run[^"]*"[^>]*>(.*?)</li>', html)]
    (line,) = [r for r in runs if "pointers to L1 tables" in r]
    match = re.fullmatch(
        r"\[0x([0-9a-f]+)–0x([0-9a-f]+)\] (\d+) pointers to L1 tables,"
        r" gfns 0x([0-9a-f]+)–0x([0-9a-f]+); below:"
        r" (\d+) tables, (\d+) × 4K leaves; (\d+) read-only, (\d+) writable \(changes below this step\)",
        line,
    )
    assert match is not None, line
    first, last, count, gfn, last_gfn, tables, leaves, readonly, writable = (
        int(g, 16) if k < 2 or k in (3, 4) else int(g) for k, g in enumerate(match.groups())
    )
    children = [spte_to_child_sp(sim.kvm, l2.spt[i]) for i in range(first, last + 1)]
    assert count == last - first + 1 == tables == len(children)
    assert (gfn, last_gfn) == (first * 512, (last + 1) * 512 - 1)
    below = [spte for child in children for spte in child.spt if spte & PT_PRESENT_MASK]
    assert leaves == len(below) == 512 * count
    assert writable == sum(1 for spte in below if spte & PT_WRITABLE_MASK) == 0
    assert readonly == leaves


def test_the_selected_spte_is_never_collapsed(client: TestClient) -> None:
    url = f"/play?scenario={WRITE_STORM}&variant=lazy&step={STORM_STEP}&spte=1:200:2"
    html = panel(client.get(url).text, "tree")
    rows = collapsed_rows(table_markup(html, 1, 0x200))
    selected = re.search(r'<li class="spte[^"]*is-selected[^"]*" data-spte [^>]*data-index="0x2"', html)
    assert selected is not None
    assert all('data-index="0x2"' not in row.inner for row in rows)
    # The entries after it still collapse into one line; the two before it are too few to.
    assert [(r.first, r.last) for r in rows] == [(3, 0x1FF)]


# --- reverse maps and TLBs ------------------------------------------------------------------------------


def test_rmap_heads_and_tlb_entries_collapse_into_alike_runs(client: TestClient) -> None:
    sim, _ = run_to(WRITE_STORM, "lazy", STORM_STEP)
    (slot,) = sim.kvm.memslots
    heads = slot.rmap[0]
    assert len(heads) == 512
    table = find_shadow_page(sim.kvm, 0x200, 1)
    assert table is not None and all(table.spt[i] & PT_WRITABLE_MASK for i in range(512))
    entries = sim.kvm.vcpus[0].tlb.entries()
    assert [(e.level, e.gfn, e.pfn, e.writable, e.dirty) for e in entries] == [
        (1, 0x200 + i, 0x80000 + i, True, True) for i in range(512)
    ]

    html = client.get(f"/play?scenario={WRITE_STORM}&variant=lazy&step={STORM_STEP}").text
    rmaps = re.findall(r'<tr class="collapsed" data-collapsed="(\d+)">(.*?)</tr>', panel(html, "rmaps"))
    assert [(n, cells(row)) for n, row in rmaps] == [
        ("512", "512 × 4K 0x200–0x3ff L1[0x0–0x1ff] in table 0x200, writable")
    ]
    assert "more heads not shown" not in panel(html, "rmaps")
    tlb = re.findall(r'<tr class="collapsed" data-collapsed="(\d+)">(.*?)</tr>', panel(html, "tlb"))
    assert [(n, cells(row)) for n, row in tlb] == [
        ("512", "0x200–0x3ff 512 × 4K 0x80000–0x801ff ✓ yes ✓ yes")
    ]


def test_rmap_heads_of_every_eighth_page_rewritten_are_one_repeating_row(client: TestClient) -> None:
    # After GET_DIRTY_LOG re-protected all 512 and every eighth page was written again, heads alternate:
    # one writable, seven read-only. One row says so, and it must be what the sptes allow.
    steps = json.loads(load_builtin_text(WRITE_STORM))["steps"]
    step = [i for i, s in enumerate(steps) if s["op"] == "write"][2] + 1
    sim, _ = run_to(WRITE_STORM, "lazy", step)
    table = find_shadow_page(sim.kvm, 0x200, 1)
    assert table is not None
    (slot,) = sim.kvm.memslots
    assert all(len(pte_list(head)) == 1 for head in slot.rmap[0].values())
    html = panel(client.get(f"/play?scenario={WRITE_STORM}&variant=lazy&step={step}").text, "rmaps")
    rows = re.findall(r"<tr([^>]*)>(.*?)</tr>", html)[1:]  # past the head row
    ((attrs, row),) = rows
    assert attrs == ' class="collapsed" data-collapsed="512" data-collapsed-repeats="64"'
    match = re.fullmatch(
        r"512 × 4K 0x200–0x3ff L1\[0x0–0x1ff\] in table 0x200: 64 × \((\d+) (writable|read-only)"
        r" \+ (\d+) (writable|read-only)\)",
        cells(row),
    )
    assert match is not None, cells(row)
    pieces = [(int(match.group(1)), match.group(2)), (int(match.group(3)), match.group(4))]
    index = 0
    for _ in range(64):
        for n, perm in pieces:
            for _ in range(n):
                assert bool(table.spt[index] & PT_WRITABLE_MASK) == (perm == "writable"), index
                index += 1
    assert index == 512
    assert "more heads not shown" not in html


# --- the trace ------------------------------------------------------------------------------------------

# The call chain of a write fault on a page of a read-only 2M spte after logging started, in 3.16:
# vmx.c handle_ept_violation → kvm_mmu_page_fault → tdp_page_fault, which tries fast_page_fault, looks the
# page up (try_async_pf → gfn_to_pfn) and maps it with __direct_map; __direct_map drops the large spte
# (drop_large_spte → __drop_large_spte → drop_spte, then a flush), gets and links a level-1 table, and
# installs the leaf with mmu_set_spte → set_spte → mark_page_dirty; then direct_pte_prefetch. The CPU's
# retried store sets the new spte's A and D bits (ept_ad_update) for the same access.
FAULT_CHAIN_316 = [
    ("guest_access", 0),
    ("handle_ept_violation", 1),
    ("tdp_page_fault", 2),
    ("fast_page_fault", 3),
    ("gfn_to_pfn", 3),
    ("__direct_map", 3),
    ("drop_large_spte", 4),
    ("drop_spte", 5),
    ("kvm_flush_remote_tlbs", 5),
    ("kvm_mmu_get_page", 4),
    ("link_shadow_page", 4),
    ("mmu_set_spte", 4),
    ("mark_page_dirty", 5),
    ("direct_pte_prefetch", 4),
    ("ept_ad_update", 1),
]


def test_a_fault_step_is_traced_callers_first_as_the_kernel_calls() -> None:
    sim, results = run_to("worked-example", "lazy", 5)  # #4: write 0x250 under the read-only 2M spte
    result = results[-1]
    assert isinstance(result.op, WriteStep) and result.op.gfn == 0x250
    assert result.events is not None and result.calls is not None
    order = call_order(result.events, result.calls)
    assert [(result.events[i].name, depth) for i, depth in order] == FAULT_CHAIN_316
    # Every event is shown exactly once.
    assert sorted(i for i, _ in order) == list(range(len(result.events)))
    # The result JSON keeps the order the events were emitted in: callees before the callers that
    # emit when they return (mark_page_dirty before mmu_set_spte, mmu_set_spte before __direct_map).
    written: Any = result_json(sim, results)
    step_json = written["steps"][-1]
    names = [e["name"] for e in step_json["events"]]
    assert names == [e.name for e in result.events]
    assert names.index("mark_page_dirty") < names.index("mmu_set_spte") < names.index("__direct_map")
    assert all("depth" not in e for e in step_json["events"])


def test_a_fast_fault_in_the_buggy_preset_nests_the_dirty_mark_under_the_fix() -> None:
    # caf6900f: fast_page_fault → fast_pf_fix_direct_spte → mark_page_dirty of the range's first page.
    _, results = run_to("worked-example", "lazy-buggy", 5)
    result = results[-1]
    assert result.events is not None and result.calls is not None
    shown = [(result.events[i].name, d) for i, d in call_order(result.events, result.calls)]
    chain = [
        ("tdp_page_fault", 2),
        ("fast_page_fault", 3),
        ("fast_pf_fix_direct_spte", 4),
        ("mark_page_dirty", 5),
    ]
    at = shown.index(chain[0])
    assert shown[at : at + len(chain)] == chain
    (mark,) = [
        result.events[i]
        for i, _ in call_order(result.events, result.calls)
        if result.events[i].name == "mark_page_dirty"
    ]
    assert event_json(mark)["gfn"] == 0x200  # the first page of the range, not the page written


def test_alike_calls_fold_into_one_line_with_their_ranges() -> None:
    sim, results = run_to(WRITE_STORM, "lazy", STORM_STEP)
    result = results[-1]
    assert result.events is not None
    accesses = [event_json(e) for e in result.events if e.name == "guest_access"]
    assert len(accesses) == 512 and all(a["via"] == "fault" for a in accesses)
    shown = Shown(STORM_STEP, sim, result, {}, traced=True)
    view = trace_view(shown, "lazy")
    top = [ev for ev in view.events if ev.depth == 0]
    # The first store drops the 2M spte; the 511 after it fault on empty entries, each alike.
    assert [(ev.name, ev.count) for ev in top] == [("guest_access", 1), ("guest_access", 511)]
    args = dict(top[1].args)
    gfns = [int(str(a["gfn"])) for a in accesses[1:]]
    assert args["gfn"] == f"{min(gfns):#x}–{max(gfns):#x}" == "0x201–0x3ff"
    assert args["via"] == "fault" and args["write"] == "true"
    # Under it, each callee once, for all 511, with its own ranges.
    below = view.events[view.events.index(top[1]) + 1 :]
    assert [(ev.name, ev.depth, ev.count) for ev in below] == [
        ("handle_ept_violation", 1, 511),
        ("tdp_page_fault", 2, 511),
        ("gfn_to_pfn", 3, 511),
        ("__direct_map", 3, 511),
        ("mmu_set_spte", 4, 511),
        ("mark_page_dirty", 5, 511),
        ("direct_pte_prefetch", 4, 511),
        ("ept_ad_update", 1, 511),
    ]
    marked = dict(below[5].args)
    assert marked["gfn"] == "0x201–0x3ff" and marked["logged"] == "true"
    assert dict(below[4].args)["index"] == "0x1–0x1ff"
    assert len(view.events) == len(FAULT_CHAIN_316) + 9  # the first access's lines, then those of the 511


# --- every summary line the tree prints, against the engine's state -------------------------------------

RUN_LINE = re.compile(
    r"\[0x(?P<a>[0-9a-f]+)–0x(?P<b>[0-9a-f]+)\] (?P<n>\d+) × (?P<size>4K|2M|1G) (?:leaf|leaves)"
    r"(?:, gfns 0x[0-9a-f]+–0x[0-9a-f]+, all (?P<flags>[A-Z ]+?)(?P<changed> \(changed this step\))?"
    r"| removed this step, gfns 0x[0-9a-f]+–0x[0-9a-f]+)"
)
HEAD = re.compile(r"(\d+) tables · (\d+) present sptes · (\d+) large · (\d+) changed this step")


@pytest.mark.parametrize(
    ("scenario", "variant", "step"),
    [
        (WRITE_STORM, "lazy", STORM_STEP),
        (WRITE_STORM, "zap", 8),  # after the 64 rewrites: changed leaves between runs of unchanged ones
        (WRITE_STORM, "modern", 2),  # enabling logging split the 2M leaf into 512 read-only 4K leaves
        ("todays-kernel", "modern", 4),  # logging started: both 2M leaves split, eagerly
    ],
)
def test_every_summary_line_of_the_tree_is_what_the_engine_holds(
    client: TestClient, scenario: str, variant: str, step: int
) -> None:
    sim, results = run_to(scenario, variant, step)
    kvm = sim.kvm
    olds = first_olds(results)
    html = panel(client.get(f"/play?scenario={scenario}&variant={variant}&step={step}").text, "tree")

    head = HEAD.search(text_of(html))
    assert head is not None
    live = kvm.active_mmu_pages.values()
    present = sum(1 for sp in live for spte in sp.spt if spte & PT_PRESENT_MASK)
    large = sum(
        1 for sp in live if sp.level > 1 for s in sp.spt if s & PT_PRESENT_MASK and s & PT_PAGE_SIZE_MASK
    )
    changed = sum(
        1
        for (level, sp_gfn, i), old in olds.items()
        if (sp := find_shadow_page(kvm, sp_gfn, level)) is not None and sp.spt[i] != old
    )
    assert tuple(int(g) for g in head.groups()) == (len(kvm.active_mmu_pages), present, large, changed)

    checked = 0
    for start in [m.start() for m in re.finditer(r'<div class="sp ', html)]:
        head_tag = html[start : html.index(">", start)]
        level = int(re.search(r'data-sp-level="(\d+)"', head_tag).group(1))  # type: ignore[union-attr]
        sp_gfn = int(re.search(r'data-sp-gfn="0x([0-9a-f]+)"', head_tag).group(1), 16)  # type: ignore[union-attr]
        end = html.find('<div class="sp ', start + 1)
        body = html[start : end if end > 0 else len(html)]
        sp = find_shadow_page(kvm, sp_gfn, level)
        if 'data-freed="1"' in head_tag or sp is None:
            continue
        summary = text_of(re.search(r'<span class="sp-summary">(.*?)</span>', body).group(1))  # type: ignore[union-attr]
        live_entries = [s for s in sp.spt if s & PT_PRESENT_MASK]
        if level == 1 and live_entries:
            writable = sum(1 for s in live_entries if s & PT_WRITABLE_MASK)
            readonly = len(live_entries) - writable
            assert summary == f"{len(live_entries)} × 4K leaves; {readonly} read-only, {writable} writable"
        elif level > 1 and live_entries:
            assert summary == f"{len(live_entries)} of 512 entries present"
        for run in re.findall(r'<li class="run[^"]*"[^>]*>(.*?)</li>', body):
            match = RUN_LINE.fullmatch(text_of(run))
            if match is None:
                continue  # pointers: read by test_a_run_of_pointers_counts_the_tables_and_leaves_below_it
            a, b, n = int(match["a"], 16), int(match["b"], 16), int(match["n"])
            if match["flags"] is None:  # removed this step
                gone = [
                    i
                    for i in range(a, b + 1)
                    if (level, sp_gfn, i) in olds and not sp.spt[i] & PT_PRESENT_MASK
                ]
                assert len(gone) == n, run
            else:
                members = [i for i in range(a, b + 1) if sp.spt[i] & PT_PRESENT_MASK]
                assert len(members) == n, run
                words = {flags_text(flag_word(sp.spt[i], kvm.masks)) for i in members}
                assert words == {match["flags"]}, run
                were_changed = {
                    (level, sp_gfn, i) in olds and olds[(level, sp_gfn, i)] != sp.spt[i] for i in members
                }
                assert were_changed == {match["changed"] is not None}, run
            checked += 1
        for row in collapsed_rows(body):
            if row.repeats:
                check_pattern(row, sp, olds, kvm.masks)
                checked += 1
            elif row.ghost_free:
                members = list(range(row.first, row.last + 1))
                assert all(sp.spt[i] & PT_PRESENT_MASK for i in members)
                assert row.count == len(members)
                flag_words = {flag_word(sp.spt[i], kvm.masks) for i in members}
                assert len(flag_words) == 1 and bits_text(flag_words.pop()) in row.summary
                checked += 1
    assert checked


@pytest.mark.parametrize("variant", ["zap", "lazy-buggy", "lazy", "modern"])
def test_every_lesson_step_is_traced_as_one_call_tree(variant: str) -> None:
    """On every built-in lesson (but the gigabyte one, whose full trace is a million events) and every
    preset: each event is shown once, depths go down one call at a time, and every kernel function that
    called others is shown before them, deeper than its caller."""
    for name in builtin_names():
        if name == "one-gig-page":
            continue
        sim = Simulation(parse_scenario(json.loads(load_builtin_text(name))), make_policy(variant))
        for result in sim.run():
            assert result.events is not None and result.calls is not None
            order = call_order(result.events, result.calls)
            assert sorted(i for i, _ in order) == list(range(len(result.events))), (name, result.index)
            depths = [d for _, d in order]
            assert not depths or depths[0] == 0
            assert all(b <= a + 1 for a, b in pairwise(depths)), (name, result.index)
            # A callee never shows above its caller: a fault's pieces all sit under its guest access.
            names = [result.events[i].name for i, _ in order]
            for callee, caller in (
                ("tdp_page_fault", "handle_ept_violation"),
                ("mmu_set_spte", "__direct_map"),
            ):
                for k, n in enumerate(names):
                    if n == callee and caller in names:
                        above = [names[j] for j in range(k) if depths[j] == depths[k] - 1]
                        assert above and above[-1] in (caller, "direct_pte_prefetch"), (name, result.index)


PIECE = re.compile(
    r"(?P<n>\d+) × 4K (?:leaf|leaves)(?P<changed> changed this step, now|,) (?P<bits>[A-Z· ]+?)"
)


def check_pattern(
    row: Collapsed, sp: KvmMmuPage, olds: dict[tuple[int, int, int], int], masks: SpteMasks
) -> None:
    """A line "R × (A + B)" over [first, last]: A's entries then B's, R times, each piece what it says."""
    match = re.fullmatch(
        r"\[0x[0-9a-f]+–0x[0-9a-f]+\] (\d+) × \((.*)\), gfns 0x[0-9a-f]+–0x[0-9a-f]+", row.summary
    )
    assert match is not None, row.summary
    assert int(match.group(1)) == row.repeats
    pieces = [PIECE.fullmatch(part) for part in match.group(2).split(" + ")]
    assert all(pieces), match.group(2)
    index = row.first
    for _ in range(row.repeats):
        for piece in pieces:
            assert piece is not None
            for _ in range(int(piece["n"])):
                spte = sp.spt[index]
                assert spte & PT_PRESENT_MASK
                assert bits_text(flag_word(spte, masks)) == piece["bits"], (index, row.summary)
                key = (sp.level, sp.gfn, index)
                assert (key in olds and olds[key] != spte) == (piece["changed"] != ","), (index, row.summary)
                index += 1
    assert index - 1 == row.last and index - row.first == row.count


def test_every_eighth_page_rewritten_reads_as_one_repeating_line(client: TestClient) -> None:
    # 64 rewrites, every eighth page, after GET_DIRTY_LOG re-protected all 512: 64 times one writable leaf
    # changed this step and seven read-only ones.
    steps = json.loads(load_builtin_text(WRITE_STORM))["steps"]
    step = [i for i, s in enumerate(steps) if s["op"] == "write"][2] + 1
    sim, results = run_to(WRITE_STORM, "lazy", step)
    table = find_shadow_page(sim.kvm, 0x200, 1)
    assert table is not None
    html = panel(client.get(f"/play?scenario={WRITE_STORM}&variant=lazy&step={step}").text, "tree")
    # The step's first fault, at 0x200, is the walk shown: its leaf L1[0] is drawn on its own (the walk
    # is never folded away), so the pattern repeats from L1[1] on: 63 times seven read-only leaves and
    # one changed, up to L1[0x1f8]; the last seven read-only leaves are a run of their own.
    assert 'data-walk-gfn="0x200"' in html
    (row,) = collapsed_rows(table_markup(html, 1, 0x200))
    assert (row.repeats, row.count, row.first, row.last) == (63, 504, 1, 0x1F8)
    check_pattern(row, table, first_olds(results), sim.kvm.masks)
    assert row.summary.startswith("[0x1–0x1f8] 63 × (7 × 4K leaves, R · X")


def test_a_strided_run_of_calls_says_its_stride() -> None:
    # The 64 rewrites, every eighth page, are 64 alike fast faults: a range alone would claim the pages
    # between them too.
    steps = json.loads(load_builtin_text(WRITE_STORM))["steps"]
    step = [i for i, s in enumerate(steps) if s["op"] == "write"][2] + 1
    sim, results = run_to(WRITE_STORM, "lazy", step)
    view = trace_view(Shown(step, sim, results[-1], {}, traced=True), "lazy")
    ((access, count),) = [(ev, ev.count) for ev in view.events if ev.depth == 0]
    gfns = sorted({0x200 + 8 * k for k in range(64)})
    assert count == 64 and dict(access.args)["gfn"] == f"{gfns[0]:#x}–{gfns[-1]:#x} every 0x8"
    (fixed,) = [ev for ev in view.events if ev.name == "fast_pf_fix_direct_spte"]
    assert dict(fixed.args)["index"] == "0x0–0x1f8 every 0x8" and fixed.count == 64


def test_evenly_spaced_tlb_entries_are_one_row_that_says_the_distance(client: TestClient) -> None:
    steps = json.loads(load_builtin_text(WRITE_STORM))["steps"]
    step = [i for i, s in enumerate(steps) if s["op"] == "write"][2] + 1
    sim, _ = run_to(WRITE_STORM, "lazy", step)
    entries = sim.kvm.vcpus[0].tlb.entries()
    # GET_DIRTY_LOG flushed the TLB; the 64 rewrites cached one writable, dirty 4K entry each.
    assert [(e.level, e.gfn, e.pfn, e.writable, e.dirty) for e in entries] == [
        (1, 0x200 + 8 * k, 0x80000 + 8 * k, True, True) for k in range(64)
    ]
    html = panel(client.get(f"/play?scenario={WRITE_STORM}&variant=lazy&step={step}").text, "tlb")
    rows = re.findall(r"<tr( class=\"collapsed\" data-collapsed=\"\d+\")?>(.*?)</tr>", html)[1:]
    assert [(attrs, cells(row)) for attrs, row in rows] == [
        (
            ' class="collapsed" data-collapsed="64"',
            "0x200–0x3f8 every 8 pages 64 × 4K 0x80000–0x801f8 ✓ yes ✓ yes",
        )
    ]
