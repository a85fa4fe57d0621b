"""The price of a request (engine/estimate.py) counts every term that costs, and the routes refuse what is
over it before anything runs.

Each term of the estimate has its own test, so a term that goes missing fails one: the per-step record,
each op kind beyond a note, each slot a harvest or flush acts on, each page a slot walk reads, huge pages
split and recovered, the rows a full-detail result writes per step and the final state's rows. Then the
4.5 KB share code of 64 one-page slots and 40 000 migrate_round: its result is refused with 413 on
/result.json and POST /api/run, its /compare too; and every built-in lesson under every preset stays
within the default budget.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

import app.cache
from app.main import create_app
from app.settings import Settings
from engine import estimate
from engine.codec import encode_scenario
from engine.estimate import (
    cumulative_work,
    estimate_result,
    estimate_result_rows,
    estimate_work,
    step_prices,
)
from engine.policy import PRESETS
from engine.scenario import STEP_OPS, Scenario, parse_scenario
from scenarios import builtin_scenarios

Json = dict[str, Any]


def build(
    steps: list[Json], memslots: list[Json] | None = None, vm: Json | None = None, guest: Json | None = None
) -> Scenario:
    raw: Json = {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": memslots or [{"id": 1, "base_gfn": 0, "npages": 4096}],
        "steps": steps,
    }
    if vm is not None:
        raw["vm"] = vm
    if guest is not None:
        raw["guest"] = guest
    return parse_scenario(raw)


def one_page_slots(count: int) -> list[Json]:
    return [{"id": i, "base_gfn": 0x1000 + 0x10 * i, "npages": 1} for i in range(count)]


def run_price(steps: list[Json], memslots: list[Json] | None = None, vm: Json | None = None) -> int:
    return estimate_work(build(steps, memslots, vm)).total


def hostile() -> Json:
    """The 4.5 KB URL: 64 one-page slots, one write, a migration of 40 000 rounds."""
    steps = [{"op": "write", "gfn": 0x1000}, {"op": "migrate_begin"}]
    steps += [{"op": "migrate_round"}] * 40_000 + [{"op": "migrate_end"}]
    return {"format": "sptelab-scenario", "version": 1, "memslots": one_page_slots(64), "steps": steps}


# ---------------------------------------------------------------------------------------------------------
# Each term


# One step of each op, valid after the prefix: a write maps pages, slot 1 is logged, a migration runs.
PREFIX: list[Json] = [
    {"op": "write", "gfn": 0, "count": 64},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "migrate_begin"},
]
ONE_OF_EACH: dict[str, Json] = {
    "read": {"op": "read", "gfn": 0, "count": 16},
    "write": {"op": "write", "gfn": 0, "count": 16},
    "enable_dirty_log": {"op": "enable_dirty_log", "slot": 1},
    "disable_dirty_log": {"op": "disable_dirty_log", "slot": 1},
    "get_dirty_log": {"op": "get_dirty_log", "slot": 1},
    "clear_dirty_log": {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 4096},
    "reset_dirty_ring": {"op": "reset_dirty_ring"},
    "flush_tlb": {"op": "flush_tlb"},
    "zap_all": {"op": "zap_all"},
    "note": {"op": "note", "text": "x"},
    "migrate_begin": {"op": "migrate_begin"},
    "migrate_round": {"op": "migrate_round"},
    "migrate_end": {"op": "migrate_end"},
    "get_dirty_log_end": {"op": "get_dirty_log_end", "slot": 1},
    "write_gpte": {"op": "write_gpte", "table": 0, "index": 0, "pte": "0x1067"},
    "invlpg": {"op": "invlpg", "gva": "0x1000"},
    "set_cr3": {"op": "set_cr3", "space": 0},
}
# The guest's paging operations exist only under shadow paging; the end of a split GET needs its start.
SHADOW_ONLY = {"write_gpte", "invlpg", "set_cr3"}
SPLIT_GET: Json = {"op": "get_dirty_log", "slot": 1, "split": True}


def test_every_op_has_a_case() -> None:
    assert set(ONE_OF_EACH) == set(STEP_OPS)


@pytest.mark.parametrize("op", [op for op in ONE_OF_EACH if op != "note"])
def test_each_op_costs_more_than_a_note_to_run_and_to_write(op: str) -> None:
    """Harvests, flushes, toggles and migrations are priced beyond a step's own bookkeeping."""
    prefix = PREFIX[:2] if op == "migrate_begin" else PREFIX
    vm: Json = {"vcpus": 2}
    guest = None
    if op in SHADOW_ONLY:
        vm, guest = {"vcpus": 2, "mmu": "shadow"}, {"tables_at": 0}
    # Priced step by step, so that the rounding of the totals to whole units hides no term.
    if op == "get_dirty_log_end":
        note = list(step_prices(build([*prefix, SPLIT_GET, ONE_OF_EACH["note"], ONE_OF_EACH[op]], vm=vm)))[-2]
        other = list(step_prices(build([*prefix, SPLIT_GET, ONE_OF_EACH[op]], vm=vm)))[-1]
    else:
        note = list(step_prices(build([*prefix, ONE_OF_EACH["note"]], vm=vm, guest=guest)))[-1]
        other = list(step_prices(build([*prefix, ONE_OF_EACH[op]], vm=vm, guest=guest)))[-1]
    assert other.run > note.run, op
    assert other.rows > note.rows, op


@pytest.mark.parametrize("op", ["get_dirty_log", "migrate_round", "migrate_begin", "migrate_end"])
def test_harvests_are_priced_per_slot(op: str) -> None:
    """The same pages in 64 one-page slots cost more to harvest than in one slot: each slot is an ioctl."""

    def price(memslots: list[Json], full: bool) -> int:
        enable = [{"op": "enable_dirty_log", "slot": s["id"]} for s in memslots]
        harvest = (
            [{"op": "get_dirty_log", "slot": s["id"]} for s in memslots]
            if op == "get_dirty_log"
            else [{"op": "migrate_begin"}, *[{"op": "migrate_round"}] * (op != "migrate_begin")]
        )
        if op == "migrate_end":
            harvest.append({"op": "migrate_end"})
        steps = [{"op": "write", "gfn": 0x1000}, *(enable if op == "get_dirty_log" else []), *harvest]
        scenario = build(steps, memslots)
        return estimate_result(scenario, full=True) if full else estimate_work(scenario).total

    many = one_page_slots(64)
    one = [{"id": 0, "base_gfn": 0x1000, "npages": 64}]
    for full in (False, True):
        assert price(many, full) > price(one, full) + 64 * estimate.SLOT, (op, full)


def test_a_migrate_round_is_priced_per_slot_and_written_per_slot() -> None:
    def price(slots: int, rounds: int, full: bool) -> int:
        steps: list[Json] = [{"op": "write", "gfn": 0x1000}, {"op": "migrate_begin"}]
        steps += [{"op": "migrate_round"}] * rounds
        scenario = build(steps, one_page_slots(slots))
        return estimate_result(scenario, full=True) if full else estimate_work(scenario).total

    for full in (False, True):
        per_round_1 = price(1, 101, full) - price(1, 1, full)
        per_round_64 = price(64, 101, full) - price(64, 1, full)
        assert per_round_64 >= per_round_1 + 100 * 63 * estimate.SLOT, full
    # Writing a round's events costs more than running it.
    assert price(64, 101, True) - price(64, 1, True) > 2 * (price(64, 101, False) - price(64, 1, False))


@pytest.mark.parametrize("op", ["get_dirty_log", "clear_dirty_log", "migrate_round"])
def test_slot_walks_are_priced_per_page(op: str) -> None:
    def price(npages: int) -> int:
        step = {**ONE_OF_EACH[op], "num": npages} if op == "clear_dirty_log" else ONE_OF_EACH[op]
        steps: list[Json] = [{"op": "write", "gfn": 0}, {"op": "enable_dirty_log", "slot": 1}]
        steps.append({"op": "migrate_begin"})
        return run_price([*steps, *[step] * 100], [{"id": 1, "base_gfn": 0, "npages": npages}])

    small, big = price(4096), price(1 << 20)
    assert big - small >= 100 * ((1 << 20) - 4096) * estimate.BITMAP, op


@pytest.mark.parametrize("size", ["2M", "1G"])
def test_huge_pages_are_priced_when_logging_toggles(size: str) -> None:
    """A huge page is split when logging starts and recovered when it stops (`modern`): every toggle."""
    npages = 512 if size == "2M" else 1 << 18
    memslots = [{"id": 1, "base_gfn": 0x40000, "npages": npages, "host_page": size}]
    vm = {"max_page_level": size}
    read = {"op": "read", "gfn": 0x40000}
    toggle = [{"op": "enable_dirty_log", "slot": 1}, {"op": "disable_dirty_log", "slot": 1}]
    once = estimate_work(build([read, *toggle], memslots, vm))
    thrice = estimate_work(build([read, *toggle * 3], memslots, vm))
    assert once.huge >= npages * (estimate.SPLIT + estimate.RECOVER)
    assert thrice.huge >= 3 * once.huge - 3
    # The same slot backed by 4K pages has no huge page to split.
    flat = [{**memslots[0], "host_page": "4K"}]
    assert estimate_work(build([read, *toggle * 3], flat, vm)).huge == 0
    # Each split or recovered spte is a row of the full result.
    full_once = estimate_result(build([read, *toggle], memslots, vm), full=True)
    assert full_once >= 2 * npages * estimate.SPTE_ROWS


def test_accesses_that_can_fault_cost_more_than_tlb_hits() -> None:
    moving = run_price([{"op": "write", "gfn": 0, "count": 4096}])
    repeated = run_price([{"op": "write", "gfn": 0, "count": 4096, "stride": 0}])
    assert moving - repeated >= 4095 * (estimate.FAULT - estimate.TLB_HIT) - 1
    assert repeated > run_price([{"op": "write", "gfn": 0}])


def test_rows_written_are_priced() -> None:
    """A full-detail result costs its per-step records; every result costs its final state's rows."""
    scenario = build([{"op": "write", "gfn": 0, "count": 1024}])
    run = estimate_work(scenario).total
    rows = estimate_result_rows(scenario)
    assert rows >= 1024  # a leaf per page written, a TLB entry and a dirty bit per access
    assert estimate_result(scenario, full=False) >= run + rows - 1
    assert estimate_result(scenario, full=True) >= run + rows + 1024 * estimate.FAULT_ROWS
    # Notes write a record each.
    notes = build([{"op": "note", "text": "x"}] * 1000)
    assert estimate_result(notes, full=True) - estimate_result(notes, full=False) >= 1000 * estimate.RECORD


def test_clear_is_amortised_over_the_bits_set() -> None:
    """CLEARs of a whole slot protect at most what was mapped when logging started, and a page per
    access since: a hundred CLEARs of a slot nobody writes cost little more than one."""
    steps = [{"op": "write", "gfn": 0, "count": 4096}, {"op": "enable_dirty_log", "slot": 1}]
    clear = {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 4096}
    once, many = run_price([*steps, clear]), run_price([*steps, *[clear] * 100])
    assert many - once < 100 * (estimate.STEP + estimate.SLOT + 4096 * estimate.BITMAP) + 1
    rewritten = [clear, {"op": "write", "gfn": 0, "count": 4096}]
    assert run_price([*steps, *rewritten * 100]) - many >= 99 * 4096 * estimate.PROTECT


def test_the_prefix_prices_agree() -> None:
    for _, scenario in builtin_scenarios():
        prefix = cumulative_work(scenario)
        assert prefix == [estimate_work(scenario, n).total for n in range(len(scenario.steps) + 1)]


# ---------------------------------------------------------------------------------------------------------
# The routes


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False, follow_redirects=False)


def detail(response: Any) -> str:
    if response.headers.get("content-type", "").startswith("application/json"):
        return str(response.json()["detail"])
    return str(response.text)


def test_the_hostile_url_is_refused_before_anything_runs(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("the engine ran for a request over the budget")

    raw = hostile()
    code = encode_scenario(parse_scenario(raw))
    assert 4000 < len(code) < 5000  # the URL of the report: about 4.5 KB
    settings = Settings()
    scenario = parse_scenario(raw)
    price = estimate_result(scenario, full=True)
    assert price > settings.result_work
    monkeypatch.setattr(app.cache.Run, "__init__", never)
    monkeypatch.setattr("app.routes.export.Simulation", never)
    monkeypatch.setattr("app.routes.api.Simulation", never)
    response = client.get(f"/result.json?s={code}")
    assert response.status_code == 413, response.text[:300]
    text = detail(response)
    for fragment in (f"{price:,}", f"{settings.result_work:,}", "SPTELAB_RESULT_WORK", "sptelab run"):
        assert fragment in text, (fragment, text)
    response = client.post("/api/run", json={"scenario": raw, "detail": "full"})
    assert response.status_code == 413, response.text[:300]
    assert f"{price:,}" in detail(response) and "sptelab run" in detail(response)
    # Four presets of its summary pass are over the run budget; one is not, and /play may run it.
    per_run = estimate_work(scenario).total
    assert per_run <= settings.run_budget < len(PRESETS) * per_run
    response = client.get(f"/compare?s={code}&step={len(raw['steps'])}")
    assert response.status_code == 413 and "4 runs" in detail(response)


def test_the_hostile_url_on_play_is_refused_under_a_smaller_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = parse_scenario(hostile())
    per_run = estimate_work(scenario).total
    small = TestClient(create_app(Settings(run_budget=per_run - 1)), raise_server_exceptions=False)
    monkeypatch.setattr(app.cache.Run, "__init__", lambda *_: (_ for _ in ()).throw(AssertionError))
    response = small.get(f"/play?s={encode_scenario(scenario)}&step={len(scenario.steps)}")
    assert response.status_code == 413
    assert f"{per_run:,}" in detail(response) and "per memslot" in detail(response)


def test_every_builtin_lesson_under_every_preset_stays_under_the_default_budget() -> None:
    settings = Settings()
    for name, scenario in builtin_scenarios():
        per_run = estimate_work(scenario).total
        # /play to the last step (one preset at a time) and /compare of every preset at once.
        assert per_run * len(PRESETS) <= settings.run_budget, name
        # POST /api/run in summary.
        assert estimate_result(scenario, full=False) <= settings.run_budget, name
        # /result.json and POST /api/run in full detail: all but one-gig-page under `modern`, whose run
        # splits and recovers a gigabyte of sptes (a row each) and was refused before the estimate was
        # rewritten.
        for preset, policy in PRESETS.items():
            fits = estimate_result(scenario, full=True, policy=policy) <= settings.result_work
            assert fits == ((name, preset) != ("one-gig-page", "modern")), (name, preset)


def test_builtin_results_download(client: TestClient) -> None:
    for name, _scenario in builtin_scenarios():
        for preset in PRESETS:
            if (name, preset) == ("one-gig-page", "modern"):
                continue
            response = client.get(f"/result.json?scenario={name}&variant={preset}")
            assert response.status_code == 200, (name, preset, response.text[:200])
            assert json.loads(response.content)["format"] == "sptelab-result"
