"""What users read about the presets: the landing page's key, where each names the kernel it stands for in
the words its description (engine/policy.py PRESET_DESCRIPTIONS) begins with, and README's switch table,
which must be the presets' own values.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PRESET_NAMES
from fastapi.testclient import TestClient
from test_app_routes import Page, page

from app.main import create_app
from engine.policy import PRESET_DESCRIPTIONS, PRESET_KERNELS, PRESETS, SWITCH_VALUES

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
