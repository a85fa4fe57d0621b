"""The web player in each kernel generation's vocabulary: the inspector names every spte bit at its position
in the preset's layout, and the counters are the statistics `kvm_stat` shows for that kernel.

Bit positions come from the spec: §1.1 for 3.x (HW/MW at 10/11), §5.7's "spte encoding" row for 6.x
(MMU-present 11, host-writable 57, MMU-writable 58, suppress-#VE 63); the counter names from §3.12 (3.x
debugfs `largepages`) and §5.7's "stats" row (6.x `pages_4k`, `pages_2m`, `pages_1g`, `pf_taken`, ...).
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from engine.codec import encode_scenario
from engine.scenario import parse_scenario

PLAY = "/play?scenario=worked-example"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def bit_rows(html: str) -> dict[str, tuple[str, str]]:
    """name -> (position, value) of every row of the inspector's bit table."""
    rows = re.findall(r'data-bit="([^"]+)" data-bit-position="([^"]+)" data-bit-value="([^"]+)"', html)
    return {name: (position, value) for name, position, value in rows}


def stats(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-stat="([a-z_0-9]+)">([^<]*)<', html))


def test_the_inspector_names_the_3x_bits_at_10_and_11(client: TestClient) -> None:
    # After step 1 (§7.2): L2[1] = 0x80000DF7, R W X PS A HW MW.
    html = client.get(f"{PLAY}&variant=lazy&step=1&spte=2:0:1").text
    rows = bit_rows(html)
    assert rows["HW"] == ("10", "1") and rows["MW"] == ("11", "1") and rows["D"] == ("9", "0")
    assert "SVE" not in rows and "MMU-present" not in rows
    assert "0x80000df7" in html


def test_the_inspector_names_the_6x_bits_where_6x_keeps_them(client: TestClient) -> None:
    # The same read under modern: built writable, so dirty (make_spte), with the 6.x software bits.
    html = client.get(f"{PLAY}&variant=modern&step=1&spte=2:0:1").text
    rows = bit_rows(html)
    assert rows["HW"] == ("57", "1") and rows["MW"] == ("58", "1")
    assert rows["MMU-present"] == ("11", "1") and rows["SVE"] == ("63", "1")
    assert rows["D"] == ("9", "1") and rows["PS"] == ("7", "1")
    assert "0x8600000080000bf7" in html
    # The tree shows the contract's flags whatever the layout, and a pointer's 6.x bits (MMU-present,
    # suppress-#VE) are not among them.
    large = re.search(r'data-level="0x2" data-sp-gfn="0x0" data-index="0x1" data-value="([^"]+)" '
                      r'data-flags="([^"]+)"', html)
    assert large is not None and large.groups() == ("0x8600000080000bf7", "R W X PS A D HW MW")
    root = re.search(r'data-level="0x4" data-sp-gfn="0x0" data-index="0x0" data-value="([^"]+)" '
                     r'data-flags="([^"]+)"', html)
    assert root is not None and root.group(2) == "R W X A"
    assert int(root.group(1), 16) & ~(((1 << 52) - 1) & ~0xFFF) == 1 << 63 | 1 << 11 | 0x107


def test_the_counters_are_3x_debugfs_names_under_the_3x_presets(client: TestClient) -> None:
    shown = stats(client.get(f"{PLAY}&variant=zap&step=1").text)
    assert shown["largepages"] == "1" and shown["pf_fixed"] == "1"
    assert {"mmu_cache_miss", "mmu_shadow_zapped", "remote_tlb_flush", "exits"} <= set(shown)
    assert not {"lpages", "pages_4k", "pages_2m", "pf_taken"} & set(shown)


def test_the_counters_are_6x_names_under_modern(client: TestClient) -> None:
    # After migrate_begin (step 3, eager split): 512 4K sptes, no huge page (§5.2).
    shown = stats(client.get(f"{PLAY}&variant=modern&step=3").text)
    assert (shown["pages_4k"], shown["pages_2m"], shown["pages_1g"]) == ("512", "0", "0")
    assert (shown["pf_taken"], shown["pf_fixed"]) == ("1", "1")
    assert {"pf_fast", "pf_spurious", "remote_tlb_flush", "exits"} <= set(shown)
    assert not {"lpages", "largepages", "mmu_cache_miss", "mmu_shadow_zapped"} & set(shown)


def test_the_player_says_when_3x_largepages_runs_ahead(client: TestClient) -> None:
    # A write to a shared copy-on-write 2M page: the notifier drops the read-only 2M spte without counting
    # it out of largepages (3.14 kvm_unmap_rmapp), then the retried fault maps a new one.
    scenario = {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": [
            {"id": 1, "base_gfn": "0x200", "npages": 512, "host_page": "2M", "base_pfn": "0x80000",
             "host_writable": False}
        ],
        "steps": [{"op": "read", "gfn": "0x210"}, {"op": "write", "gfn": "0x250"}],
    }
    parse_scenario(scenario)
    code = encode_scenario(scenario)
    html = client.get(f"/play?s={code}&variant=lazy&step=2").text
    assert stats(html)["largepages"] == "2"
    assert "data-stats-note" in html and "mmu-notifier" in html
    modern = client.get(f"/play?s={code}&variant=modern&step=2").text
    assert stats(modern)["pages_2m"] == "1" and "data-stats-note" not in modern
