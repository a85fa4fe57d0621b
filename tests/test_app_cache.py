"""The simulation cache and the view model: any step, reached any way, shows exactly what a fresh run
to that step gives; memory stays bounded; big slots render as summaries."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.budget_bytes import ByteBudget
from app.cache import Run, RunCache
from app.explain.context import Context
from app.explain.events import explain
from app.main import create_app
from app.replay import freeze, replay_to
from app.settings import Settings
from app.views.play import play_view
from engine.codec import encode_scenario
from engine.policy import PRESETS, make_policy
from engine.result import present_sptes
from engine.scenario import EnableDirtyLogStep, Scenario, parse_scenario
from engine.sched import set_resched
from engine.simulation import Simulation
from engine.trace import event_json
from scenarios import load_builtin_text


def example() -> Scenario:
    return parse_scenario(load_builtin_text("worked-example"))


def state(sim: Simulation) -> tuple[object, ...]:
    kvm = sim.kvm
    return (
        present_sptes(kvm),
        {slot.id: slot.dirty_gfns() if slot.dirty_bitmap is not None else None for slot in kvm.memslots},
        [vcpu.tlb.entries() for vcpu in kvm.vcpus],
        kvm.stats(),
        [v.as_json() for v in sim.violations],
        dict(sim.checker.pending),
    )


def fresh(scenario: Scenario, variant: str, n: int) -> tuple[Simulation, list[Any]]:
    sim = Simulation(scenario, make_policy(variant))
    return sim, [sim.step() for _ in range(n)]


@pytest.mark.parametrize("variant", list(PRESETS))
def test_any_step_in_any_order_matches_a_fresh_run(variant: str) -> None:
    scenario = example()
    # Copies every 3 steps, whatever they cost, so that states are thawed from checkpoints too.
    settings = Settings(checkpoint_interval=3, cursors_per_run=2, checkpoint_copy_work=0)
    run = Run(("x", make_policy(variant)), scenario, make_policy(variant), settings)
    order = list(range(13)) + list(range(12, -1, -1)) + random.Random(7).sample(range(13), 13)
    for n in order:
        shown = run.at(n)
        sim, results = fresh(scenario, variant, n)
        assert state(shown.sim) == state(sim), n
        if n:
            assert shown.result is not None and shown.traced
            assert shown.result.spte_changes == results[-1].spte_changes
            # The shown trace keeps the first `trace_events` events and counts the rest (modern's enable
            # write-protects 512 split 4K sptes, one event each).
            names = [e.name for e in results[-1].events or []]
            kept = [e.name for e in shown.result.events or []]
            assert kept == names[: len(kept)] and len(kept) + shown.dropped_events == len(names)
        run.park(shown)
    assert len(run.records) == 12


@pytest.mark.parametrize("variant", ["zap", "modern"])
def test_replay_from_the_nearest_snapshot_matches_a_fresh_run(variant: str) -> None:
    """replay_to thaws the newest snapshot at or before the step asked for and runs on from it; the
    state it hands out is a private copy, so stepping it leaves the snapshot as it was."""
    scenario = example()
    sim = Simulation(scenario, make_policy(variant), detail="summary")
    snapshots = {0: freeze(sim)}
    for _ in range(5):
        sim.step()
    snapshots[5] = freeze(sim)
    for m in range(len(scenario.steps) + 1):
        replayed = replay_to(snapshots, scenario, m)
        assert state(replayed) == state(fresh(scenario, variant, m)[0]), m
        assert replayed.scenario is scenario
    copy = replay_to(snapshots, scenario, 5)
    copy.step()
    assert state(replay_to(snapshots, scenario, 5)) == state(fresh(scenario, variant, 5)[0])


def test_history_of_one_spte() -> None:
    scenario = example()
    settings = Settings(checkpoint_interval=2, checkpoint_copy_work=0)
    run = Run(("x", make_policy("lazy")), scenario, make_policy("lazy"), settings)
    assert [step for step, _, _ in run.history((2, 0, 1), 12)] == [0, 1, 2, 4]
    assert [step for step, _, _ in run.history((2, 0, 1), 3)] == [0, 1, 2]
    # kvm-mmu.md §7.2 under lazy: mapped writable and written at #4, write-protected by each round,
    # made writable again by the fast path at #8.
    changes = run.history((1, 0x200, 0x50), 12)
    assert [(step, hex(old), hex(new)) for step, old, new in changes] == [
        (4, "0x0", "0x80050f77"),
        (7, "0x80050f77", "0x80050f75"),
        (8, "0x80050f75", "0x80050f77"),
        (10, "0x80050f77", "0x80050f75"),
    ]


def test_cursors_and_runs_stay_bounded() -> None:
    scenario = example()
    settings = Settings(cursors_per_run=2, cache_runs=2)
    cache = RunCache(settings)
    run = cache.get("a", scenario, make_policy("lazy"))
    for n in (0, 5, 9, 2, 11, 7):
        run.park(run.at(n))
    assert len(run._cursors) == 2
    for key in ("b", "c", "d"):
        cache.get(key, scenario, make_policy("lazy"))
    assert len(cache) == 2
    budget = 1 << 20
    small = RunCache(Settings(), ByteBudget(budget, reserve=0))
    runs = [small.get(key, scenario, make_policy("zap")) for key in "abcdef"]
    for run in runs:
        run.ensure(12)
    small.trim()
    kept = [run for run in runs if small.get(run.key[0], scenario, make_policy("zap")) is run]
    assert 1 <= len(kept) < len(runs)
    assert sum(run.weight for run in kept) <= budget or len(kept) == 1


def big_scenario(pages: int) -> Scenario:
    return parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "title": "big",
            "memslots": [{"id": 1, "base_gfn": 0x40000, "npages": pages, "host_page": "2M"}],
            "steps": [
                {"op": "write", "gfn": 0x40000, "count": pages},
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "write", "gfn": 0x40000, "count": pages // 2, "stride": 2},
                {"op": "write", "gfn": 0x40005},
                {"op": "get_dirty_log", "slot": 1},
            ],
        }
    )


def test_a_big_slot_renders_as_summaries() -> None:
    pages = 8192
    scenario = big_scenario(pages)
    settings = Settings(tree_sptes=200, bitmap_cells=256, trace_step_limit=1000, trace_events=50)
    run = Run(("x", make_policy("lazy")), scenario, make_policy("lazy"), settings)
    for n in (1, 3, 4, 5):
        shown = run.at(n)
        view = play_view(shown, "lazy", None, tree_cap=200, bitmap_cells=256)
        # The cap, plus the pointers leading to what must be drawn (one per table at most).
        assert view.tree.drawn <= 200 + view.tree.tables
        for bitmap in view.bitmaps:
            assert sum(len(row.cells) for row in bitmap.rows) <= 256 + 32
        assert len(view.trace.events) <= 50
        run.park(shown)
    # Step 4 (the write to 0x40005) is small: traced, and its one new spte is drawn.
    shown = run.at(4)
    view = play_view(shown, "lazy", None, tree_cap=200, bitmap_cells=256)
    assert view.trace.traced and view.tree.changed >= 1
    # Step 3 (4096 writes) is too big to trace event by event.
    assert not run.at(3).traced


def test_the_big_page_stays_small() -> None:
    scenario = big_scenario(4096)
    code = encode_scenario(scenario)
    client = TestClient(create_app())
    for step in (1, 3, 5):
        response = client.get(f"/play?s={code}&variant=lazy&step={step}")
        assert response.status_code == 200
        assert len(response.content) < 200_000
        assert len(re.findall(r"\bdata-spte\b", response.text)) <= Settings().tree_sptes + 20


# The worked example, and the lessons whose steps reach the mmu notifier (cow-large-spte), the memslot zap
# (zap-all: 3.x's generation zap, 6.x's zap of everything) and huge page recovery (todays-kernel).
EXPLAINED = ["worked-example", "cow-large-spte", "zap-all", "todays-kernel"]


@pytest.mark.parametrize("name", EXPLAINED)
def test_explain_knows_every_event_the_example_emits(name: str) -> None:
    for variant in PRESETS:
        sim = Simulation(parse_scenario(load_builtin_text(name)), make_policy(variant))
        for result in sim.run():
            ctx = Context(sim.kvm.masks)  # the run's spte layout, as the player reads its events
            for event in result.events or []:
                text = explain(event_json(event), ctx)
                assert text and not text.endswith(" acted."), event.name


def _toggled_gigabyte() -> Scenario:
    steps: list[dict[str, Any]] = [{"op": "read", "gfn": "0x40000"}, {"op": "write", "gfn": "0x40000"}]
    for _ in range(3):
        steps += [{"op": "enable_dirty_log", "slot": 1}, {"op": "write", "gfn": "0x40200"}]
        steps += [{"op": "disable_dirty_log", "slot": 1}]
    return parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "vm": {"max_page_level": "1G"},
            "memslots": [
                {"id": 1, "base_gfn": "0x40000", "npages": 262144, "host_page": "1G", "base_pfn": "0x40000"}
            ],
            "steps": steps,
        }
    )


def test_a_step_stopped_half_way_rewinds_its_run_and_the_run_goes_on_as_if_never_stopped() -> None:
    # The room stops a build at the engine's cond_resched points (app/room.py): here, inside the second
    # split of a gigabyte. The run must go back to its newest snapshot, and a later pass must give what a
    # pass never stopped gives, record for record and spte for spte.
    scenario, policy = _toggled_gigabyte(), make_policy("modern", {})
    settings = Settings(checkpoint_interval=2, checkpoint_copy_work=0)  # a snapshot every second step
    stopped = Run(("toggled", policy), scenario, policy, settings)
    calls = 0
    stopped_in: list[int] = []

    class StopError(Exception):
        pass

    def stop_in_the_second_split() -> None:
        nonlocal calls
        calls += 1
        if calls == 1300:  # the first split and recovery take about 2 x 513 points: inside the second split
            stopped_in.append(len(stopped.records))
            raise StopError

    set_resched(stop_in_the_second_split)
    try:
        with pytest.raises(StopError):
            stopped.ensure(stopped.total)
    finally:
        set_resched(None)
    (step,) = stopped_in
    assert isinstance(scenario.steps[step], EnableDirtyLogStep) and step > 2
    # Back at the newest snapshot before the step stopped half way: the steps after it are forgotten.
    assert len(stopped.records) == max(k for k in stopped._checkpoints if k <= step) > 0
    assert not stopped.finished.kvm.log.touched  # no step's log is kept by the frontier
    whole = Run(("toggled", policy), scenario, policy, settings)
    whole.ensure(whole.total)
    assert stopped.records == whole.records
    assert present_sptes(stopped.finished.kvm) == present_sptes(whole.finished.kvm)
