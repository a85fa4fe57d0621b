"""The exports of the player: `/export.svg` (one step as a picture) and `/result.json` (the whole run).

The picture is read the way the page is: through the contract's hooks, kept on the SVG's groups, and
checked against what the player must show for the spec's worked example (`browser/worked_example.py`,
every value from kvm-mmu.md §7). The result is compared byte for byte with a fresh run's.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from browser.worked_example import EXPECTED, L1_SP, L2_INDEX, L2_SP, POINTER, POINTER_FLAGS, PRESETS, STEPS
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from engine.canonical import dumps
from engine.codec import encode_scenario
from engine.estimate import estimate_result
from engine.policy import make_policy
from engine.result import result_json
from engine.scenario import parse_scenario
from engine.simulation import Simulation
from scenarios import load_builtin_text

EXAMPLE = "worked-example"
SVG = "{http://www.w3.org/2000/svg}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DC = "{http://purl.org/dc/elements/1.1/}"
# Elements that run code, style the picture from a sheet, or pull in another file.
FORBIDDEN_TAGS = {"script", "style", "foreignObject", "image", "use", "iframe", "feImage", "animate", "set"}


# The address the server is told it is reached at: the export's link starts with it.
PUBLIC = "https://sptelab.example.org"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings(public_url=PUBLIC)), follow_redirects=False)


def svg_url(variant: str, step: int, source: str = f"scenario={EXAMPLE}") -> str:
    return f"/export.svg?{source}&variant={variant}&step={step}"


def share_url(variant: str, step: int, source: str = f"scenario={EXAMPLE}") -> str:
    return f"{PUBLIC}/play?{source}&variant={variant}&step={step}"


def get_svg(client: TestClient, url: str) -> tuple[str, ET.Element]:
    response = client.get(url)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(response.content)  # well-formed XML, or this raises
    assert root.tag == f"{SVG}svg"
    return response.text, root


def present_sptes(root: ET.Element) -> dict[tuple[str, str, str], ET.Element]:
    """Every drawn spte (not a removed one's ghost) by (level, sp gfn, index), as the hooks spell them."""
    out: dict[tuple[str, str, str], ET.Element] = {}
    for element in root.iter():
        if "data-spte" in element.attrib:
            key = (element.attrib["data-level"], element.attrib["data-sp-gfn"], element.attrib["data-index"])
            assert key not in out, f"spte {key} drawn twice"
            out[key] = element
    return out


def dirty_cells(root: ET.Element) -> dict[str, str]:
    cells: dict[str, str] = {}
    for element in root.iter():
        gfn = element.attrib.get("data-dirty-gfn")
        if gfn is not None:
            assert gfn not in cells, f"cell {gfn} drawn twice"
            cells[gfn] = element.attrib["data-dirty"]
    return cells


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext())


# ---------------------------------------------------------------------------------------------------------
# The worked example, value for value


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("step", range(1, STEPS + 1))
def test_svg_shows_the_worked_example(client: TestClient, preset: str, step: int) -> None:
    shown = EXPECTED[preset][step]
    _, root = get_svg(client, svg_url(preset, step))
    sptes = present_sptes(root)
    l2 = sptes.get(("0x2", f"{L2_SP:#x}", f"{L2_INDEX:#x}"))
    if shown.l2 is None:
        assert l2 is None or "R" not in l2.attrib["data-flags"].split()
    elif shown.l2 == "pointer":
        assert l2 is not None and POINTER.fullmatch(l2.attrib["data-value"])
        assert l2.attrib["data-flags"] == POINTER_FLAGS
    else:
        assert l2 is not None and (l2.attrib["data-value"], l2.attrib["data-flags"]) == shown.l2
        assert l2.attrib.get("data-large") == "1"
        assert "▣ 2M page" in text_of(l2)
    level1 = {
        int(index, 16): (element.attrib["data-value"], element.attrib["data-flags"])
        for (level, sp_gfn, index), element in sptes.items()
        if level == "0x1" and sp_gfn == f"{L1_SP:#x}"
    }
    assert level1 == {i: (small.value(L1_SP + i), small.flags) for i, small in shown.l1.items()}
    large = [e for e in sptes.values() if "PS" in e.attrib["data-flags"].split()]
    assert len(large) == shown.large_leaves
    assert all(e.attrib.get("data-large") == "1" for e in large)
    cells = dirty_cells(root)
    assert {gfn for gfn, bit in cells.items() if bit == "1"} == {f"{g:#x}" for g in shown.dirty or ()}
    if shown.dirty is not None:
        assert len(cells) == 512  # the slot's whole bitmap, cell by cell
    else:
        assert not cells
    violations = {e.attrib["data-violation"] for e in root.iter() if "data-violation" in e.attrib}
    assert set(shown.violations) <= violations


def test_step5_writable_large_spte_under_lazy_buggy_and_4k_under_lazy(client: TestClient) -> None:
    # §7.2 step 5: (b) the fast path sets W on the read-only 2M spte; (c) it is dropped and gfn 0x250
    # mapped by a 4K spte.
    _, root = get_svg(client, svg_url("lazy-buggy", 5))
    sptes = present_sptes(root)
    large = sptes[("0x2", "0x0", "0x1")]
    assert large.attrib["data-value"] == "0x80000ff7"
    assert "W" in large.attrib["data-flags"].split()
    assert large.attrib.get("data-changed") == "1"
    line = text_of(large)
    assert "★ was 0x80000ff5" in line and "0x80000ff7" in line and "R W X PS A D HW MW" in line
    assert "writable while slot 1 is dirty-logged" in line
    written = {e.attrib["data-dirty-gfn"] for e in root.iter() if e.attrib.get("data-written") == "1"}
    assert written == {"0x250"}

    _, root = get_svg(client, svg_url("lazy", 5))
    sptes = present_sptes(root)
    assert not [e for e in root.iter() if e.attrib.get("data-large") == "1"]
    small = sptes[("0x1", "0x200", "0x50")]
    assert small.attrib["data-flags"] == "R W X A D HW MW"
    assert small.attrib.get("data-changed") == "1"
    assert "4K" in text_of(small) and "gfn 0x250 → pfn 0x80050" in text_of(small)
    pointer = sptes[("0x2", "0x0", "0x1")]
    assert "→ L1 table" in text_of(pointer) and "(2M leaf)" in text_of(pointer)


def test_removed_spte_is_a_ghost(client: TestClient) -> None:
    # §7.2 step 3 (a): enabling logging zaps the writable, dirty 2M spte.
    _, root = get_svg(client, svg_url("zap", 3))
    ghosts = [e for e in root.iter() if "data-spte-ghost" in e.attrib]
    assert [(g.attrib["data-level"], g.attrib["data-index"], g.attrib["data-value"]) for g in ghosts] == [
        ("0x2", "0x1", "0x80000ff7")
    ]
    assert "data-changed" not in ghosts[0].attrib and "data-spte" not in ghosts[0].attrib
    assert "✕ removed this step" in text_of(ghosts[0])
    assert ("0x2", "0x0", "0x1") not in present_sptes(root)


def test_folded_runs_are_one_line(client: TestClient) -> None:
    # write-storm-like: a whole 4K table, alike entries, drawn as one line.
    scenario = {
        "format": "sptelab-scenario",
        "version": 1,
        "title": "a full table",
        "memslots": [{"id": 1, "base_gfn": "0x200", "npages": 512}],
        "steps": [{"op": "read", "gfn": "0x200", "count": 512}, {"op": "note", "text": "look"}],
    }
    code = encode_scenario(parse_scenario(scenario))
    text, root = get_svg(client, svg_url("lazy", 2, f"s={code}"))
    runs = [e for e in root.iter() if "data-run" in e.attrib]
    assert runs and any("× 4K leaves" in text_of(run) for run in runs)
    assert len(present_sptes(root)) < 64  # the player's drawing budget, not 512 entries
    assert "Not dirty-logged: no bitmap." in text


# ---------------------------------------------------------------------------------------------------------
# What the picture says about itself, and what it must not hold


def test_headers_title_and_share_link(client: TestClient) -> None:
    response = client.get(svg_url("lazy-buggy", 5))
    assert response.headers["content-disposition"] == (
        'attachment; filename="worked-example-lazy-buggy-step-5.svg"'
    )
    root = ET.fromstring(response.content)
    share = share_url("lazy-buggy", 5)
    title = root.find(f"{SVG}title")
    assert (
        title is not None and title.text == "One 2 MiB region, three behaviours · lazy-buggy · step 5 of 12"
    )
    assert root.findtext(f"{SVG}metadata/{RDF}RDF/{RDF}Description/{DC}source") == share
    description = root.find(f"{SVG}metadata/{RDF}RDF/{RDF}Description")
    assert description is not None and description.attrib[f"{RDF}about"] == share
    (link,) = root.iter(f"{SVG}a")
    assert link.attrib["href"] == share
    assert share in text_of(link)  # visible, small text
    heading = " ".join(text_of(e) for e in root.iter(f"{SVG}text"))
    assert "One 2 MiB region, three behaviours" in heading
    assert "Step 5 of 12" in heading and "preset lazy-buggy" in heading
    assert "#5 write gfn 0x250" in heading  # the op that leads to step 5


def test_what_if_switches_are_named(client: TestClient) -> None:
    response = client.get(svg_url("lazy", 5) + "&policy=wp_large=zap&spte=2:0:1")
    assert response.status_code == 200
    assert 'filename="worked-example-lazy-custom-step-5.svg"' in response.headers["content-disposition"]
    root = ET.fromstring(response.content)
    (link,) = root.iter(f"{SVG}a")
    assert link.attrib["href"] == share_url("lazy", 5) + "&policy=wp_large=zap&spte=2:0:1"
    assert "preset lazy + wp_large=zap" in " ".join(text_of(e) for e in root.iter(f"{SVG}text"))


def test_selected_spte_is_marked(client: TestClient) -> None:
    _, root = get_svg(client, svg_url("lazy", 9) + "&spte=1:200:60")
    selected = present_sptes(root)[("0x1", "0x200", "0x60")]
    assert "◆ selected" in text_of(selected)
    assert sum("◆ selected" in text_of(e) for e in present_sptes(root).values()) == 1


def assert_inert(text: str, root: ET.Element, share: str) -> None:
    """No script, no handler, no style sheet, and no reference to anything but the share link."""
    assert "<script" not in text.lower()
    for element in root.iter():
        local = element.tag.rsplit("}", 1)[-1]
        assert local not in FORBIDDEN_TAGS, f"<{local}> in the picture"
        for name, value in element.attrib.items():
            plain = name.rsplit("}", 1)[-1]
            assert not plain.lower().startswith("on"), f"event handler {name}"
            assert plain != "style", "inline style (the CSP's style-src 'self' refuses it)"
            assert "url(" not in value and "javascript:" not in value.lower()
            if plain in ("href", "src", "about"):
                assert value == share, f"{name}={value!r} refers to something else"


@pytest.mark.parametrize(("preset", "step"), [("zap", 3), ("lazy-buggy", 8), ("lazy", 12)])
def test_svg_is_inert(client: TestClient, preset: str, step: int) -> None:
    text, root = get_svg(client, svg_url(preset, step))
    assert_inert(text, root, share_url(preset, step))


def test_hostile_title_is_escaped(client: TestClient) -> None:
    hostile = "<script>alert(1)</script>"
    scenario: dict[str, Any] = json.loads(load_builtin_text(EXAMPLE))
    scenario["title"] = f'{hostile} & "quotes" \x01 <a href="javascript:x">'
    scenario["steps"].insert(0, {"op": "note", "text": f"{hostile} onload=alert(2)"})
    code = encode_scenario(parse_scenario(scenario))
    text, root = get_svg(client, svg_url("lazy", 1, f"s={code}"))
    share = share_url("lazy", 1, f"s={code}")
    assert_inert(text, root, share)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;a href=&quot;javascript:x&quot;&gt;" in text  # text, never an element
    title = root.find(f"{SVG}title")
    assert title is not None and title.text is not None
    assert title.text.startswith(f'{hostile} & "quotes" \ufffd <a href="javascript:x">')
    heading = " ".join(text_of(e) for e in root.iter(f"{SVG}text"))
    assert f"{hostile} onload=alert(2)" in heading  # the note, as text
    response = client.get(svg_url("lazy", 1, f"s={code}"))
    assert re.fullmatch(
        r'attachment; filename="[a-z0-9-]+-lazy-step-1\.svg"', response.headers["content-disposition"]
    )


def test_huge_slot_gives_a_bounded_picture(client: TestClient) -> None:
    """Alternating dirty and clean rows of a big slot fold into thousands of runs in the view; the picture
    draws a bounded number of them and summarises the rest."""
    scenario = {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": [{"id": 1, "base_gfn": 0, "npages": 1 << 17}],
        "steps": [
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": 0, "count": 2048, "stride": 64},
        ],
    }
    code = encode_scenario(parse_scenario(scenario))
    text, root = get_svg(client, svg_url("lazy", 2, f"s={code}"))
    assert len(text.encode()) < 1 << 20
    assert "more rows" in text
    assert len(dirty_cells(root)) <= 4096


# ---------------------------------------------------------------------------------------------------------
# Refusals: a clear 4xx, never a 500


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        (f"scenario={EXAMPLE}&variant=nope", 400, "unknown variant"),
        ("s=1.!!!", 400, "share code"),
        ("s=2.abc", 400, "share code"),
        (f"scenario={EXAMPLE}&step=99", 400, "out of range"),
        (f"scenario={EXAMPLE}&step=-1", 400, "out of range"),
        (f"scenario={EXAMPLE}&step=abc", 400, "whole number"),
        (f"scenario={EXAMPLE}&spte=nonsense", 400, "LEVEL:SPGFN:INDEX"),
        (f"scenario={EXAMPLE}&policy=wp_large", 400, "SWITCH=VALUE"),
        ("scenario=no-such-thing", 404, "no built-in scenario"),
        (f"scenario={EXAMPLE}&s=1.abc", 400, "not both"),
        ("", 400, "no scenario given"),
    ],
)
def test_svg_refusals(client: TestClient, query: str, status: int, message: str) -> None:
    response = client.get(f"/export.svg?{query}")
    assert response.status_code == status
    assert message in response.text
    assert response.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        (f"scenario={EXAMPLE}&variant=nope", 400, "unknown variant"),
        ("s=1.!!!", 400, "share code"),
        ("scenario=no-such-thing", 404, "no built-in scenario"),
        (f"scenario={EXAMPLE}&policy=nope=1", 400, "nope"),
    ],
)
def test_result_refusals(client: TestClient, query: str, status: int, message: str) -> None:
    response = client.get(f"/result.json?{query}")
    assert response.status_code == status
    assert message in response.text


# ---------------------------------------------------------------------------------------------------------
# The result JSON


@pytest.mark.parametrize("preset", PRESETS)
def test_result_json_is_a_fresh_runs_result(client: TestClient, preset: str) -> None:
    response = client.get(f"/result.json?scenario={EXAMPLE}&variant={preset}&step=5")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="worked-example-{preset}-result.json"'
    )
    sim = Simulation(parse_scenario(load_builtin_text(EXAMPLE)), make_policy(preset), detail="full")
    expected = dumps(result_json(sim, sim.run()))
    assert response.text == expected
    result = response.json()
    assert result["format"] == "sptelab-result" and result["variant"] == preset
    assert len(result["steps"]) == STEPS  # every step, whatever step= says
    assert all("events" in step and "faults" in step for step in result["steps"])


def test_result_json_with_switches(client: TestClient) -> None:
    response = client.get(f"/result.json?scenario={EXAMPLE}&variant=lazy&policy=wp_large=zap")
    assert response.status_code == 200
    assert 'filename="worked-example-lazy-custom-result.json"' in response.headers["content-disposition"]
    sim = Simulation(
        parse_scenario(load_builtin_text(EXAMPLE)), make_policy("lazy", {"wp_large": "zap"}), detail="full"
    )
    assert response.text == dumps(result_json(sim, sim.run()))


def test_result_json_of_a_share_code_is_named_after_its_title(client: TestClient) -> None:
    scenario: dict[str, Any] = json.loads(load_builtin_text(EXAMPLE))
    scenario["title"] = "My Own <Example>!"
    code = encode_scenario(parse_scenario(scenario))
    response = client.get(f"/result.json?s={code}&variant=zap")
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="my-own-example-zap-result.json"'
    assert response.json()["scenario"] == {"title": "My Own <Example>!"}


def test_result_json_refuses_a_heavy_run() -> None:
    # The bound is on the price of running in full detail and writing the result (engine/estimate.py):
    # the worked example is priced under it, a scenario of many accesses or of much work over it.
    worked = parse_scenario(json.loads(load_builtin_text(EXAMPLE)))
    bound = estimate_result(worked, full=True, policy=make_policy("lazy", {}))
    small = TestClient(create_app(Settings(result_work=bound)), follow_redirects=False)
    assert small.get(f"/result.json?scenario={EXAMPLE}").status_code == 200
    many_accesses = {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": [{"id": 1, "base_gfn": 0, "npages": 512}],
        "steps": [{"op": "read", "gfn": 0, "count": 101, "stride": 1}],
    }
    response = small.get(f"/result.json?s={encode_scenario(parse_scenario(many_accesses))}")
    assert response.status_code == 413
    assert "units of work" in response.text and "sptelab run FILE --json --variant lazy" in response.text
    # Few accesses, much work: logging toggled on many mapped pages, again and again.
    toggles: list[dict[str, Any]] = []
    for _ in range(20):
        toggles += [{"op": "enable_dirty_log", "slot": 1}, {"op": "disable_dirty_log", "slot": 1}]
    much_work = {**many_accesses, "steps": [{"op": "write", "gfn": 0, "count": 8, "stride": 1}, *toggles]}
    assert estimate_result(parse_scenario(much_work), full=True, policy=make_policy("zap", {})) > bound
    response = small.get(f"/result.json?s={encode_scenario(parse_scenario(much_work))}&variant=zap")
    assert response.status_code == 413
    assert "units of work" in response.text and "--variant zap" in response.text


# ---------------------------------------------------------------------------------------------------------
# The player's links


class Links(HTMLParser):
    """The `a[data-action]` links of a page: action → (href, has the download attribute)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: dict[str, tuple[str, bool]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        action = named.get("data-action")
        if tag == "a" and action:
            self.found[action] = (named.get("href") or "", "download" in named)


def test_player_links_to_both_exports_and_follows_the_step(client: TestClient) -> None:
    links = Links(client.get(f"/play?scenario={EXAMPLE}&variant=lazy-buggy&step=4").text).found
    assert links["export-svg"] == (f"/export.svg?scenario={EXAMPLE}&variant=lazy-buggy&step=4", True)
    assert links["export-result"] == (f"/result.json?scenario={EXAMPLE}&variant=lazy-buggy", True)
    # Stepping swaps the share block out of band: its links name the new step.
    partial = client.get(
        f"/play?scenario={EXAMPLE}&variant=lazy-buggy&step=5", headers={"HX-Request": "true"}
    )
    assert 'id="share" class="share" hx-swap-oob="true"' in partial.text
    links = Links(partial.text).found
    assert links["export-svg"][0] == f"/export.svg?scenario={EXAMPLE}&variant=lazy-buggy&step=5"
    # The links work, and the picture is of the step the player shows.
    _, root = get_svg(client, links["export-svg"][0])
    assert present_sptes(root)[("0x2", "0x0", "0x1")].attrib["data-value"] == "0x80000ff7"
    assert client.get(links["export-result"][0]).status_code == 200


def test_player_links_keep_switches_selection_and_share_codes(client: TestClient) -> None:
    code = encode_scenario(parse_scenario(load_builtin_text(EXAMPLE)))
    html = client.get(f"/play?s={code}&variant=lazy&step=3&policy=wp_large=zap&spte=2:0:1").text
    links = Links(html).found
    svg = parse_qs(urlsplit(links["export-svg"][0]).query)
    assert svg == {
        "s": [code],
        "variant": ["lazy"],
        "step": ["3"],
        "policy": ["wp_large=zap"],
        "spte": ["2:0:1"],
    }
    result = parse_qs(urlsplit(links["export-result"][0]).query)
    assert result == {"s": [code], "variant": ["lazy"], "policy": ["wp_large=zap"]}


def test_compare_view_has_no_export_links(client: TestClient) -> None:
    links = Links(client.get(f"/compare?scenario={EXAMPLE}&step=4").text).found
    assert "download" in links
    assert "export-svg" not in links and "export-result" not in links
