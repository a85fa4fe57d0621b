"""Exporting from the player in a real browser: the share block's links download this step's picture and
the run's result JSON, and they follow the step as htmx swaps the block out of band."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from engine.canonical import dumps
from engine.policy import make_policy
from engine.result import result_json
from engine.scenario import parse_scenario
from engine.simulation import Simulation
from scenarios import load_builtin_text

from .pagehooks import WORKED_EXAMPLE, expect_position, player_url
from .worked_example import EXPECTED, L1_SP, L2_INDEX, L2_SP, POINTER, POINTER_FLAGS, STEPS

SVG = "{http://www.w3.org/2000/svg}"


def download(page: Page, action: str) -> tuple[str, Path]:
    """Click `a[data-action=ACTION]` and wait for the download: (suggested file name, saved file)."""
    link = page.locator(f'a[data-action="{action}"]')
    expect(link).to_have_attribute("download", "")
    with page.expect_download() as started:
        link.click()
    done = started.value
    assert done.failure() is None
    return done.suggested_filename, done.path()


@pytest.mark.parametrize("preset", ["lazy-buggy", "lazy"])
def test_export_svg_of_the_step_stepped_to(page: Page, preset: str) -> None:
    page.goto(player_url(preset, 4))
    expect_position(page, 4, STEPS)
    page.locator('a[data-nav="next"]').first.click()
    expect_position(page, 5, STEPS)
    expect(page.locator('a[data-action="export-svg"]')).to_have_attribute(
        "href", re.compile(r"[?&]step=5(&|$)")
    )
    name, path = download(page, "export-svg")
    assert name == f"{WORKED_EXAMPLE}-{preset}-step-5.svg"
    root = ET.parse(path).getroot()  # well-formed, or this raises
    assert root.tag == f"{SVG}svg"
    sptes = {
        (e.attrib["data-level"], e.attrib["data-sp-gfn"], e.attrib["data-index"]): e.attrib
        for e in root.iter()
        if "data-spte" in e.attrib
    }
    shown = EXPECTED[preset][5]  # §7.2 step 5
    l2 = sptes[("0x2", f"{L2_SP:#x}", f"{L2_INDEX:#x}")]
    if shown.l2 == "pointer":
        assert POINTER.fullmatch(l2["data-value"]) and l2["data-flags"] == POINTER_FLAGS
    else:
        assert isinstance(shown.l2, tuple)
        assert (l2["data-value"], l2["data-flags"]) == shown.l2  # lazy-buggy: the 2M spte is writable
    level1 = {
        int(index, 16): (attrs["data-value"], attrs["data-flags"])
        for (level, sp_gfn, index), attrs in sptes.items()
        if level == "0x1" and sp_gfn == f"{L1_SP:#x}"
    }
    assert level1 == {i: (small.value(L1_SP + i), small.flags) for i, small in shown.l1.items()}
    dirty = {e.attrib["data-dirty-gfn"] for e in root.iter() if e.attrib.get("data-dirty") == "1"}
    assert dirty == {f"{gfn:#x}" for gfn in shown.dirty or ()}
    (link,) = root.iter(f"{SVG}a")
    assert link.attrib["href"].endswith(f"/play?scenario={WORKED_EXAMPLE}&variant={preset}&step=5")
    assert "<script" not in path.read_text(encoding="utf-8")


def test_export_result_of_the_run(page: Page) -> None:
    page.goto(player_url("lazy-buggy", 2))
    expect_position(page, 2, STEPS)
    page.locator('a[data-nav="next"]').first.click()
    expect_position(page, 3, STEPS)
    name, path = download(page, "export-result")
    assert name == f"{WORKED_EXAMPLE}-lazy-buggy-result.json"
    body = path.read_text(encoding="utf-8")
    result = json.loads(body)
    assert result["variant"] == "lazy-buggy" and len(result["steps"]) == STEPS
    sim = Simulation(
        parse_scenario(load_builtin_text(WORKED_EXAMPLE)), make_policy("lazy-buggy"), detail="full"
    )
    assert body == dumps(result_json(sim, sim.run()))
