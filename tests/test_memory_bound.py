"""Memory stays within SPTELAB_CACHE_BYTES: every cache is under one byte budget, its entries are measured
honestly (estimates checked against tracemalloc here), cache keys are canonical (hostile headers add no
entry), and a real server fed a hostile mix keeps its RSS within the budget plus a fixed overhead."""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.budget_bytes import ByteBudget, Lru
from app.cache import Run
from app.main import create_app
from app.replay import freeze, thaw
from app.settings import Settings
from app.sources import _load, source_weight
from app.state_bytes import sim_weight
from engine.policy import PRESETS
from engine.scenario import Scenario, parse_scenario
from scenarios import load_builtin_text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from memory import heavy_code, run, text_code  # noqa: E402

MIB = 1 << 20


def measured(build: Any) -> tuple[Any, int]:
    """What `build()` returns and the bytes it left allocated (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        made = build()
        gc.collect()
        return made, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def slot_scenario(host_page: str, steps: list[dict[str, Any]]) -> Scenario:
    data = {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": [{"id": 1, "base_gfn": 0, "npages": 1 << 16, "host_page": host_page}],
        "steps": steps,
    }
    return parse_scenario(json.dumps(data))


LOGGED = [{"op": "enable_dirty_log", "slot": 1}, {"op": "write", "gfn": 0, "count": 8192}]
STATES = [
    pytest.param(parse_scenario(load_builtin_text("worked-example")), "modern", 99, id="worked-example"),
    pytest.param(parse_scenario(load_builtin_text("one-gig-page")), "modern", 5, id="1g-split-to-4k"),
    pytest.param(
        slot_scenario("4K", [{"op": "write", "gfn": 0, "count": 16384}]), "lazy", 1, id="4k-written"
    ),
    pytest.param(
        slot_scenario(
            "2M", [{"op": "enable_dirty_log", "slot": 1}, {"op": "write", "gfn": 0, "count": 8192}]
        ),
        "modern",
        2,
        id="2m-logged",
    ),
]


@pytest.mark.parametrize(("scenario", "preset", "steps"), STATES)
def test_the_live_state_estimate_is_never_below_what_the_state_takes(
    scenario: Scenario, preset: str, steps: int
) -> None:
    run_ = Run(("x", PRESETS[preset]), scenario, PRESETS[preset], Settings())
    shown = run_.at(min(steps, run_.total))
    blob = freeze(shown.sim)
    del shown, run_
    (sim, _), size = measured(lambda: thaw(blob, scenario))
    estimate = sim_weight(sim)
    assert size <= estimate <= max(3 * size, size + 600_000), (size, estimate)


def test_a_sources_weight_is_never_below_what_it_takes() -> None:
    for code in (text_code(1), heavy_code()):
        source, size = measured(lambda code=code: _load("s", code))
        assert size <= source_weight(("s", code), source) <= 2 * size + 50_000


def test_the_budget_evicts_the_oldest_entry_of_any_cache() -> None:
    budget = ByteBudget(900, reserve=0)
    small: Lru[str, str] = Lru(100, budget, lambda key, value: 100)
    large: Lru[str, str] = Lru(100, budget, lambda key, value: 400)
    small.put("a", "a")
    large.put("A", "A")
    small.put("b", "b")
    assert small.get("a") == "a"  # now newer than A and b
    large.put("B", "B")  # 1000 bytes: the oldest entry of either cache goes, A
    assert large.get("A") is None and budget.total == 600
    large.put("C", "C")  # 1000: b is the oldest now
    assert small.get("b") is None and budget.total == 900
    small.put("c", "c")  # 1000: a, then B and C are newer
    assert small.get("a") is None and large.get("B") == "B" and budget.total == 900
    assert budget.peak == 900 and budget.evictions == 3


def test_hostile_host_and_trigger_headers_add_no_page_cache_entries() -> None:
    client = TestClient(create_app(Settings()), raise_server_exceptions=False)
    pages = client.app.state.store.pages  # type: ignore[attr-defined]
    url = "/play?scenario=worked-example&step=2"
    assert client.get(url).status_code == 200
    assert client.get(url, headers={"HX-Request": "true"}).status_code == 200
    entries = len(pages)
    for k in range(20):
        hostile = [
            # (a head larger than SPTELAB_HEADER_BYTES never gets this far: 431, tests/test_sockets.py)
            {"HX-Trigger": f"made-up-{k}-" + "x" * (1 << 14)},
            {"HX-Request": "true", "HX-Trigger": f"made-up-{k}"},
            {"Host": f"{'h' * (1 << 14)}{k}.example"},
            {"Host": f"bad host {k}<>"},
        ]
        for headers in hostile:
            assert client.get(url, headers=headers).status_code == 200
    assert len(pages) == entries
    # Query parameters in another order name the same page.
    assert client.get("/play?step=2&scenario=worked-example").status_code == 200
    assert len(pages) == entries
    # The slider's own trigger is the app's, and changes the answer: it keys a page of its own.
    client.get(url, headers={"HX-Request": "true", "HX-Trigger": "step-slider"})
    assert len(pages) == entries + 1


def test_a_server_under_hostile_traffic_stays_within_its_budget(tmp_path: Path) -> None:
    cache_bytes = 64 * MIB
    report = run(cache_bytes, 75.0, tmp_path / "server.log", clients=4, seed=7, settle_s=0.0)
    assert not [key for key in report.statuses if key.endswith(" 500")], report.statuses
    assert sum(report.statuses.values()) > 50, report.statuses
    assert report.budget["peak"] <= cache_bytes, report.budget
    assert report.budget["evictions"] > 0, report.budget
    assert report.peak_rss <= cache_bytes + 200 * MIB, (report.peak_rss / MIB, report.budget)
