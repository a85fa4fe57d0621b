"""The landing page's key to the presets: each names the kernel it stands for, in the words its description
(engine/policy.py PRESET_DESCRIPTIONS) begins with, and no page repeats what `modern` was once said to do.
"""

from __future__ import annotations

import pytest
from conftest import PRESET_NAMES
from fastapi.testclient import TestClient
from test_app_routes import Page, page

from app.main import create_app
from app.viewmodel import PRESET_KERNELS
from engine.policy import PRESET_DESCRIPTIONS

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
    text = " ".join(e.text for e in landing.elements if e.tag == "p" and e.within("class", "intro panel"))
    assert "6.13" in text and "put them back in place" in text and "is logged there as in 3.x" in text
    assert intro.text == "One 2 MiB spte, four kernels"
    (foot,) = [e for e in landing.elements if e.tag == "footer"]
    assert "upstream Linux 6.13 and later" in foot.text
    for stale in ("6.x kernel", "read-only read faults", "today's"):
        assert stale not in text + foot.text
