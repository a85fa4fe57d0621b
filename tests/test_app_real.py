"""The web app's "run on this machine's kernel": /real, POST /api/real, and the player's button.

Where the device cannot be opened (or the feature is off) both routes answer 503 with the reason and the
player has no button; those tests need no KVM. The rest run the live kernel and are skipped, with the
reason, only where /dev/kvm cannot be opened.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import scenario_dict, spec_example
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from engine import trace
from live.report import availability

UNAVAILABLE = availability()
needs_kvm = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no usable KVM device: {UNAVAILABLE}")


def _client(**settings: object) -> TestClient:
    return TestClient(create_app(Settings(**settings)), follow_redirects=False)  # type: ignore[arg-type]


def _verdicts(html: str) -> dict[str, str]:
    return dict(re.findall(r'class="real-verdict [a-z]+" data-variant="([^"]+)" data-agrees="(\d)"', html))


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"kvm_device": "/nonexistent/kvm"}, "/nonexistent/kvm"),
        ({"live_kernel": False}, "SPTELAB_LIVE_KERNEL"),
    ],
)
def test_without_the_device_there_is_no_button_and_the_routes_say_why(
    settings: dict[str, object], reason: str
) -> None:
    client = _client(**settings)
    player = client.get("/play?scenario=worked-example")
    assert player.status_code == 200 and "data-real-link" not in player.text
    page = client.get("/real?scenario=worked-example")
    assert page.status_code == 503
    assert "cannot run scenarios on its kernel" in page.text and reason in page.text
    api = client.post("/api/real", json={"scenario": spec_example()})
    assert api.status_code == 503
    assert reason in api.json()["detail"]


@needs_kvm
def test_the_worked_example_on_the_kernel_agrees_with_modern_and_not_with_lazy_buggy() -> None:
    """Spec §7 and its live-kernel note (2): the kernel logs 0x250, 0x260, 0x2c0 in the first round and
    0x250, 0x300 in the second, as zap, lazy and modern do; lazy-buggy reports 0x200 instead, then nothing."""
    page = _client().get("/real?scenario=worked-example")
    assert page.status_code == 200
    assert _verdicts(page.text) == {"modern": "1", "zap": "1", "lazy-buggy": "0", "lazy": "1"}
    rows = re.findall(r'<tr data-real-step="(\d+)">(.*?)</tr>', page.text, re.S)
    assert [int(index) for index, _ in rows] == [7, 10, 11]
    first = dict(rows)["7"]
    assert "0x250 0x260 0x2c0" in first
    buggy = re.search(r'data-variant="lazy-buggy" data-same="0">(.*?)</td>', first, re.S)
    assert buggy is not None
    assert re.search(r"only the kernel: <span[^>]*>0x250 0x260 0x2c0</span>", buggy.group(1))
    assert re.search(r"only lazy-buggy: <span[^>]*>0x200</span>", buggy.group(1))


@needs_kvm
def test_the_player_offers_the_kernel_and_refuses_what_it_cannot_express() -> None:
    client = _client()
    player = client.get("/play?scenario=worked-example")
    link = re.search(r'<a class="button small" href="([^"]+)" data-real-link', player.text)
    assert link is not None and link.group(1) == "/real?scenario=worked-example"
    refused = client.get("/play?scenario=zap-all")
    assert re.search(r'data-real-link data-refused="1" title="[^"]*zap_all', refused.text)
    page = client.get("/real?scenario=zap-all")
    assert page.status_code == 422 and "zap_all" in page.text


@needs_kvm
def test_api_real_returns_the_contract_object() -> None:
    scenario = scenario_dict("read-mostly-logging")
    response = _client().post("/api/real", json={"scenario": scenario, "compare": ["modern", "lazy"]})
    assert response.status_code == 200
    result = response.json()
    assert set(result) == {"format", "version", "kernel", "steps", "compare"}
    assert (result["format"], result["version"]) == ("sptelab-real", 1)
    assert len(result["steps"]) == len(scenario["steps"])
    assert result["compare"]["modern"] == {"agrees": True, "differences": []}
    # 3.x maps a read fault of a logged page writable and marks it dirty; the kernel of today does not,
    # so lazy reports pages the kernel never returns, and the kernel reports nothing lazy does not.
    lazy = result["compare"]["lazy"]
    assert not lazy["agrees"]
    assert all(d["kernel_only"] == [] and d["engine_only"] for d in lazy["differences"])


@needs_kvm
@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"scenario": {"format": "nope"}}, 422, "format"),
        ({"scenario": spec_example(), "compare": ["bogus"]}, 400, "unknown variant"),
        ({"scenario": spec_example(), "policy": {"bogus": "1"}}, 400, "bogus"),
        ({"scenario": spec_example(), "extra": 1}, 422, "extra"),
    ],
)
def test_api_real_refuses_bad_requests_by_name(body: dict[str, object], status: int, words: str) -> None:
    response = _client().post("/api/real", json=body)
    assert response.status_code == status
    assert words in str(response.json()["detail"])



def test_the_event_names_the_contract_extensions_list_are_the_engine_s() -> None:
    """docs/contract-extensions.md lists the events that extend contract §4 for scripts to match on: each
    one must be a name the engine really emits, and each of the engine's later-kernel events is listed."""
    names = {
        cls.name
        for cls in vars(trace).values()
        if isinstance(cls, type) and issubclass(cls, trace.Event) and cls is not trace.Event
    }
    text = (Path(__file__).resolve().parent.parent / "docs" / "contract-extensions.md").read_text()
    section = text[text.index("New `events[].name`") : text.index("## Command")]
    listed = set(re.findall(r"`([a-z_]+)`", section))
    assert listed <= names
    later = {"tdp_mmu_split_huge_page", "kvm_mmu_zap_collapsible_sptes", "make_spte", "pml_log"}
    assert later <= listed


@needs_kvm
def test_the_players_dirty_log_mode_goes_to_the_live_vm() -> None:
    """A what-if dirty_log_mode is how the live VM logs too (the dirty ring here): the button carries it,
    and under it the kernel still agrees with modern. Other what-if switches stay the engine's."""
    client = _client()
    whatif = "policy=dirty_log_mode=ring,eager_split=true"
    player = client.get(f"/play?scenario=clear-dirty-log&variant=lazy&{whatif}")
    link = re.search(r'<a class="button small" href="([^"]+)" data-real-link', player.text)
    assert link is not None
    assert link.group(1) == "/real?scenario=clear-dirty-log&amp;policy=dirty_log_mode=ring"
    page = client.get("/real?scenario=clear-dirty-log&policy=dirty_log_mode=ring")
    assert page.status_code == 200
    assert _verdicts(page.text)["modern"] == "1"
    assert "dirty_log_mode=ring" in page.text
