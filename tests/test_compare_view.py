"""The compare view marks the odd one out (app/views/compare.py): a column is marked on a field only when a
strict majority of the columns agree on it and the column is not among them; a split without a majority is
said once, and marks no column."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.views.compare import split

EXAMPLE = "worked-example"


@pytest.mark.parametrize(
    ("values", "groups", "majority"),
    [
        # All agree: one group, nothing to mark.
        ({"zap": 1, "lazy": 1, "modern": 1}, (("zap", "lazy", "modern"),), None),
        # Three against one: the one is the odd one out.
        ({"zap": 1, "lazy-buggy": 2, "lazy": 1, "modern": 1}, (("zap", "lazy", "modern"), ("lazy-buggy",)),
         ("zap", "lazy", "modern")),
        # Two against one against one: both singles differ from the pair.
        ({"zap": 1, "lazy-buggy": 2, "lazy": 3, "modern": 1}, (("zap", "modern"), ("lazy-buggy",), ("lazy",)),
         ("zap", "modern")),
        # Two against two, every column its own, two columns that differ: ties, no majority.
        ({"zap": 1, "lazy-buggy": 2, "lazy": 2, "modern": 1}, (("zap", "modern"), ("lazy-buggy", "lazy")),
         None),
        ({"zap": 1, "lazy-buggy": 2, "lazy": 3}, (("zap",), ("lazy-buggy",), ("lazy",)), None),
        ({"zap": 1, "lazy": 2}, (("zap",), ("lazy",)), None),
    ],
)  # fmt: skip
def test_the_majority_is_one_group_larger_than_every_other(
    values: dict[str, int], groups: tuple[tuple[str, ...], ...], majority: tuple[str, ...] | None
) -> None:
    assert split(values) == (groups, majority)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), follow_redirects=False)


def _cells(html: str) -> dict[tuple[str, str], str]:
    """(variant, field) → the cell's opening tag."""
    out = {}
    for column in re.finditer(
        r'<section class="compare-col" data-variant="([^"]+)".*?</section>', html, re.S
    ):
        for cell in re.finditer(
            r'<div class="cell-field field-[a-z_]+[^>]*data-field="([a-z_]+)"[^>]*>', column.group(0)
        ):
            out[(column.group(1), cell.group(1))] = cell.group(0)
    return out


def test_the_verdict_marks_only_the_preset_that_lost_pages(client: TestClient) -> None:
    html = client.get(f"/compare?scenario={EXAMPLE}&variants=zap,lazy-buggy,lazy&step=12").text
    cells = _cells(html)
    marked = {key for key, tag in cells.items() if 'data-differs="1"' in tag}
    # kvm-mmu.md §7.2: only lazy-buggy loses pages, so only its migration cell is the odd one out.
    assert ("lazy-buggy", "migration") in marked
    assert ("zap", "migration") not in marked and ("lazy", "migration") not in marked
    assert 'data-differs-from="zap, lazy"' in cells[("lazy-buggy", "migration")]
    # Nothing is marked in every column any more.
    fields = {field for _, field in cells}
    assert not [f for f in fields if all((v, f) in marked for v in ("zap", "lazy-buggy", "lazy"))]


def test_the_lost_pages_are_cells_of_the_bitmap(client: TestClient) -> None:
    html = client.get(f"/compare?scenario={EXAMPLE}&variants=zap,lazy-buggy,lazy&step=12").text
    columns = dict(re.findall(r'data-variant="([^"]+)"(.*?)</section>', html, re.S))
    # Logging stopped at migrate_end (the slot migrate_begin logged), so the cells are pages (data-gfn).
    lost = re.findall(r'<i data-gfn="(0x[0-9a-f]+)" data-lost="1"[^>]*>✕</i>', columns["lazy-buggy"])
    assert sorted(lost) == ["0x250", "0x260", "0x2c0", "0x300"]
    assert 'data-lost="1"' not in columns["zap"] and 'data-lost="1"' not in columns["lazy"]


def test_each_column_has_its_tree_and_bitmap(client: TestClient) -> None:
    html = client.get(f"/compare?scenario={EXAMPLE}&step=5").text
    columns = dict(re.findall(r'data-variant="([^"]+)"(.*?)</section>', html, re.S))
    assert list(columns) == ["zap", "lazy-buggy", "lazy", "modern"]
    for variant, body in columns.items():
        assert body.count('data-panel="tree"') == 1 and body.count('data-panel="bitmap"') == 1, variant
        assert "data-spte " in body and body.count("data-dirty-gfn=") == 512, variant
        # A tree's spte opens that preset's player at this step with the spte selected.
        assert f"/play?scenario=worked-example&amp;variant={variant}&amp;step=5&amp;spte=" in body
