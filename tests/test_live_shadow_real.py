"""A shadow-paging scenario through the shells of the live kernel: `POST /api/real`, `/real` and
`sptelab real` on this machine's shadow MMU.

The result must say which guest ran and on which MMU (`guest` native, `host_mmu` shadow), name the
preset that models that MMU for such a scenario (`modern`), list what it compared, and name every
difference the comparison found: none for S1, one for the scenario where the model has no write
tracking (test_live_shadow_agreement.py shows both on the kernel). Skipped, with the reason, only
without a KVM device or on a host with EPT/NPT.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_live_shadow_agreement import S1, TWO_VCPUS, WRITE_TRACKED

from app.main import create_app
from app.settings import Settings
from cli.main import main
from engine.codec import encode_scenario
from engine.scenario import parse_scenario
from live.backend import UnsupportedScenarioError, refusal, run_with_stats
from live.host import host_mmu
from live.report import availability
from live.shadow_compare import COMPARED, PVM_TOP_LEVEL

UNAVAILABLE = availability()
if UNAVAILABLE is not None:
    pytest.skip(f"no usable KVM device: {UNAVAILABLE}", allow_module_level=True)
if host_mmu() != "shadow":
    pytest.skip("this host has EPT/NPT: no preset models its MMU for a shadow-paging scenario",
                allow_module_level=True)


def _client() -> TestClient:
    return TestClient(create_app(Settings()), follow_redirects=False)


def test_the_api_says_what_ran_what_models_it_and_what_was_compared() -> None:
    live = _client().post("/api/real", json={"scenario": S1}).json()["live"]
    assert (live["guest"], live["host_mmu"], live["host_preset"], live["scenario_mmu"]) == (
        "native",
        "shadow",
        "modern",
        "shadow",
    )
    assert live["checked"] == "mmu"
    assert live["compared"] == list(COMPARED)
    assert live["host_check"] == {"preset": "modern", "agrees": True, "differences": [], "tolerated": {}}
    assert live["oracle"]["not_run"]


def test_the_page_shows_the_kernel_beside_modern_and_names_each_difference() -> None:
    client = _client()
    agreeing = client.get("/real", params={"s": encode_scenario(S1)}).text
    assert 'data-host-check="modern" data-agrees="1"' in agreeing
    # The kernel's tables beside modern's, leaf by leaf, gfn 0x500 (mapped at gva 0x600000) included.
    assert "data-differs" not in agreeing and "the model maps nothing here" not in agreeing
    assert 'data-kleaf="0x500"' in agreeing
    # The store into a write-tracked table, once a difference, agrees since the model write-tracks.
    tracked = client.get("/real", params={"s": encode_scenario(WRITE_TRACKED)}).text
    assert 'data-host-check="modern" data-agrees="1"' in tracked
    # kvm_pvm's one difference from upstream is named where it shows, as known.
    two = client.get("/real", params={"s": encode_scenario(TWO_VCPUS)}).text
    named = re.findall(r'<li data-step="(\d+)" data-what="([a-z_]+)" data-tolerated="([a-z_]+)">', two)
    assert named and all(tolerated == PVM_TOP_LEVEL for _, _, tolerated in named), named
    assert ("1", "faults", PVM_TOP_LEVEL) in named


def test_sptelab_real_prints_the_step_by_step_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "two.json"
    path.write_text(json.dumps(TWO_VCPUS))
    assert main(["real", str(path)]) == 0
    text = capsys.readouterr().out
    assert "guest: native (64-bit, on the scenario's own page tables); host MMU: shadow" in text
    assert "modern against the kernel's shadow MMU, step by step" in text
    assert "step 1 (read): 1 faults on the kernel, 0 in modern (known: " in text


def test_what_the_live_guest_cannot_do_is_refused_with_its_reason() -> None:
    paging_off = {**S1, "guest": {"paging": False}, "steps": [{"op": "write", "gfn": "0x410"}]}
    reason = refusal(parse_scenario(paging_off))
    assert reason is not None and "emulated" in reason
    split = {**S1, "steps": [{"op": "enable_dirty_log", "slot": 1},
                             {"op": "get_dirty_log", "slot": 1, "split": True},
                             {"op": "get_dirty_log_end", "slot": 1}]}
    reason = refusal(parse_scenario(split))
    assert reason is not None and "halfway" in reason
    # A gva the guest's tables do not map would be a #PF the live guest cannot take.
    unmapped = {**S1, "steps": [{"op": "read", "gva": "0x600000"}]}
    with pytest.raises(UnsupportedScenarioError, match=r"step 0 \(read\): gva 0x600000: .* not present"):
        run_with_stats(parse_scenario(unmapped), guest="native")
