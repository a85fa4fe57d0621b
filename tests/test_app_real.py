"""The web app's "run on this machine's kernel": /real, POST /api/real, and the player's button.

Where the device cannot be opened (or the feature is off) both routes answer 503 with the reason and the
player has no button; those tests need no KVM. The rest run the live kernel and are skipped, with the
reason, only where /dev/kvm cannot be opened.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from conftest import scenario_dict, spec_example
from fastapi.testclient import TestClient

from app.budget_bytes import Lru
from app.main import create_app
from app.settings import Settings
from engine import trace, trace_shadow, trace_tables
from engine.codec import encode_scenario
from engine.scenario import parse_scenario
from live.backend import KernelRun
from live.report import availability
from live.stats import Snapshot
from live.tracefs import SpteSet, TablePage, TraceStep, unavailable

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


EMULATED = "the kernel emulated these accesses: its dirty-log ioctls were checked, its MMU was not"
UNMODELLED_HEADLINE = (
    "the kernel's {mmu} MMU ran these accesses, and no preset models it yet: the presets' dirty logs are"
    " set beside the kernel's as data, not checked against it"
)


def _execution(html: str) -> tuple[str, str]:
    found = re.search(r'data-live-execution="([a-z]+)" data-mmu-exercised="(\d)"', html)
    assert found is not None
    return found.group(1), found.group(2)


@needs_kvm
def test_the_worked_example_on_the_kernel_checks_what_the_kernel_ran() -> None:
    """Spec §7: the kernel logs 0x250, 0x260, 0x2c0 in the first round and 0x250, 0x300 in the second, as
    the emulated guest predicts; lazy-buggy's MMU would log 0x200 instead, then nothing. On a kernel that
    emulated the guest the page says so, and no preset is said to agree with the kernel's MMU."""
    page = _client().get("/real?scenario=worked-example")
    assert page.status_code == 200
    assert re.search(r'data-oracle data-agrees="1"', page.text)
    verdicts = _verdicts(page.text)
    assert list(verdicts) == ["modern", "zap", "lazy-buggy", "lazy"]
    # modern's log is data here, not a fact of the kernel's; the 3.x presets' are the spec's.
    assert (verdicts["zap"], verdicts["lazy-buggy"], verdicts["lazy"]) == ("1", "0", "1")
    execution, native = _execution(page.text)
    headline = re.search(r'<p class="real-headline"><strong>(.*?)</strong>', page.text)
    assert headline is not None
    if native == "1" and 'data-host-mmu="tdp"' in page.text:
        assert "agrees with the kernel's MMU at every step" in page.text
    elif native == "1":
        # This machine: the native guest ran through a shadow MMU, which no preset models yet.
        assert 'data-guest="native"' in page.text
        assert html.unescape(headline.group(1)) == "T" + UNMODELLED_HEADLINE.format(mmu="shadow")[1:] + "."
        assert "not checked: no preset models a shadow MMU yet" in page.text
        assert "agrees with the kernel's MMU" not in page.text
        assert 'class="real-verdict data"' in page.text
        assert 'class="real-verdict good" data-variant' not in page.text
    else:
        assert execution == "emulated"
        assert headline.group(1) == "T" + EMULATED[1:] + "."
        assert "What each preset's MMU would log" in page.text
        assert "agrees with the kernel" not in page.text
        assert 'class="real-verdict data"' in page.text
        assert 'class="real-verdict good" data-variant' not in page.text
        assert re.search(r'data-stat="pf_taken">0<', page.text)
    rows = re.findall(r'<tr data-real-step="(\d+)">(.*?)</tr>', page.text, re.S)
    assert [int(index) for index, _ in rows] == [7, 10, 11]
    first = dict(rows)["7"]
    assert "0x250 0x260 0x2c0" in first
    assert re.search(r'<td class="good" data-oracle data-same="1">', first)
    buggy = re.search(r'data-variant="lazy-buggy" data-same="0">(.*?)</td>', first, re.S)
    assert buggy is not None
    assert re.search(r"only the kernel: <span[^>]*>0x250 0x260 0x2c0</span>", buggy.group(1))
    assert re.search(r"only lazy-buggy: <span[^>]*>0x200</span>", buggy.group(1))
    # Every access step made the guest run (an exit at least), so each has a row of counters.
    counted = {int(index) for index in re.findall(r'<tr data-stats-step="(\d+)">', page.text)}
    assert counted >= {0, 1, 3, 4, 5, 6, 8, 9}


def _serve_run(monkeypatch: pytest.MonkeyPatch, run: KernelRun) -> None:
    """The app with a usable device whose every live run is `run`; made-up results stay in the test."""
    monkeypatch.setattr("app.livekernel.kernel_unavailable", lambda settings: None)
    monkeypatch.setattr("app.livekernel.live_results", Lru(4))
    monkeypatch.setattr("live.report.run_with_stats", lambda *args, **kwargs: run)


def _made_up_run(native: bool) -> KernelRun:
    """The worked example's kernel logs with the counters of an emulated run, or of one through the MMU."""
    parsed = parse_scenario(spec_example())
    kernel: list[list[int] | None] = [None] * len(parsed.steps)
    kernel[7], kernel[10] = [0x250, 0x260, 0x2C0], [0x250, 0x300]
    counters = {"pf_taken": 6, "insn_emulation": 8} if native else {"pf_taken": 0, "insn_emulation": 64}
    return KernelRun(
        logs=kernel,
        step_stats=[Snapshot(vm={}, vcpus=({"exits": 1},)) for _ in parsed.steps],
        totals=Snapshot(vm={"pages_4k": 6 if native else 0}, vcpus=({**counters, "exits": 8},)),
        stats_missing=None,
        guest_accesses=8,
        pages_touched=6,
    )


@pytest.mark.parametrize(("native", "host"), [(False, "shadow"), (True, "tdp"), (True, "shadow")])
def test_the_page_says_agreement_with_an_mmu_only_when_a_preset_models_the_mmu_that_ran(
    native: bool, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("live.report.host_mmu", lambda: host)
    _serve_run(monkeypatch, _made_up_run(native))
    client = _client()
    page = client.get("/real", params={"s": encode_scenario(spec_example()), "variants": "lazy,lazy-buggy"})
    assert page.status_code == 200
    assert _execution(page.text) == (("mmu", "1") if native else ("emulated", "0"))
    assert _verdicts(page.text) == {"lazy": "1", "lazy-buggy": "0"}
    assert re.search(r'data-oracle data-agrees="1"', page.text)
    if native and host == "tdp":
        assert "agrees with the kernel's MMU at every step" in page.text
        assert "would log" not in page.text
        assert 'class="real-verdict good" data-variant="lazy"' in page.text
    elif native:
        assert "no preset models it yet" in html.unescape(page.text)
        # An untraced run (no root, no tracefs): the kernel's tables are not drawn, and the page says why.
        assert "data-no-kernel-tables>Not drawn: the kernel's tracepoints were not read" in page.text
        assert "agrees with the kernel" not in page.text
        assert "not checked: no preset models a shadow MMU yet" in page.text
        assert 'class="real-verdict data" data-variant="lazy"' in page.text
    else:
        assert "T" + EMULATED[1:] + "." in page.text
        assert "agrees with the kernel" not in page.text
        assert "its MMU would log the same pages at every step" in page.text
        assert 'class="real-verdict data" data-variant="lazy"' in page.text
    api = client.post("/api/real", json={"scenario": spec_example()})
    assert api.status_code == 200 and api.json()["live"]["mmu_exercised"] is native


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
    body = {"scenario": scenario, "compare": ["modern", "lazy"], "guest": "emulated"}
    response = _client().post("/api/real", json=body)
    assert response.status_code == 200
    result = response.json()
    assert set(result) == {"format", "version", "kernel", "steps", "compare", "live"}
    assert (result["format"], result["version"]) == ("sptelab-real", 1)
    assert len(result["steps"]) == len(scenario["steps"])
    assert all(set(step) == {"index", "dirty_log", "live"} for step in result["steps"])
    live = result["live"]
    assert live["oracle"] == {"agrees": True, "differences": []}
    # 3.x maps a read fault of a logged page writable and marks it dirty; an emulated read marks nothing,
    # so lazy's MMU would report pages the kernel never returns, and the kernel nothing lazy does not.
    lazy = result["compare"]["lazy"]
    assert not lazy["agrees"]
    assert all(d["kernel_only"] == [] and d["engine_only"] for d in lazy["differences"])
    if not live["mmu_exercised"]:
        assert (live["execution"], live["headline"], live["page_faults"]) == ("emulated", EMULATED, 0)
        assert live["emulated_instructions"] >= live["guest_accesses"] > 0


@needs_kvm
def test_the_native_guest_runs_through_the_kernel_s_mmu_and_the_page_shows_what_it_built() -> None:
    """live-kernel.md §3 on this kind of host: the native guest takes page faults where the emulated one
    emulates; with tracefs, the kernel's own sptes are in each step's `live`, and the first write under
    logging drops the 2M spte to one writable 4K spte in a new direct table."""
    client = _client()
    result = client.post("/api/real", json={"scenario": spec_example()}).json()
    live = result["live"]
    assert (live["guest"], live["execution"], live["mmu_exercised"]) == ("native", "mmu", True)
    # Faults taken, and no instruction emulated but the `out` that ends each access step.
    access_steps = sum(1 for step in spec_example()["steps"] if step["op"] in ("read", "write"))
    assert live["page_faults"] > 0 and live["emulated_instructions"] <= access_steps
    page = client.get("/real?scenario=worked-example")
    assert 'data-guest="native"' in page.text and "data-other-guest" in page.text
    if not live["traced"]:
        assert live["trace_missing"] and 'data-traced="0"' in page.text
        return
    write = result["steps"][4]["live"]  # the first write after migrate_begin enabled logging
    assert [(s["gfn"], s["level"]) for s in write["sptes_set"]] == [(0x250, 1)]
    assert int(write["sptes_set"][0]["spte"], 16) & 0x2  # writable
    assert write["tables_created"] == [{"gfn": 0x200, "level": 1, "direct": True}]
    begin = result["steps"][2]["live"]  # migrate_begin: logging on, neither a split nor a zap
    assert begin["sptes_set"] == [] and begin["tables_zapped"] == []
    assert 'data-traced="1"' in page.text


@needs_kvm
def test_the_real_page_refuses_an_unknown_guest() -> None:
    page = _client().get("/real?scenario=worked-example&guest=bochs")
    assert page.status_code == 400 and "native or emulated" in page.text


@needs_kvm
def test_api_real_refuses_a_scenario_over_the_budget_before_running_it() -> None:
    scenario = spec_example()
    scenario["steps"] = [{"op": "write", "gfn": "0x200", "count": 512}] * 2000
    response = _client(run_budget=100_000).post("/api/real", json={"scenario": scenario})
    assert response.status_code == 413
    assert "live-kernel run" in response.json()["detail"]
    page = _client(run_budget=100_000).get("/real", params={"s": encode_scenario(scenario)})
    assert page.status_code == 413


def test_api_real_refuses_a_body_over_a_mebibyte() -> None:
    body = b'{"scenario": {"title": "' + b"x" * (1 << 20) + b'"}}'
    response = _client().post("/api/real", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413


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
        for module in (trace, trace_tables, trace_shadow)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, trace.Event) and cls is not trace.Event
    }
    text = (Path(__file__).resolve().parent.parent / "docs" / "contract-extensions.md").read_text()
    section = text[text.index("New `events[].name`") : text.index("## Command")]
    # Each bullet that lists new event names, without the fields it names in parentheses.
    bullets = [b for b in section.split("\n- ") if b.startswith("New `events[].name`")]
    listed = {
        name for bullet in bullets for name in re.findall(r"`([a-z_0-9]+)`", re.sub(r"\([^)]*\)", "", bullet))
    }
    assert listed <= names, listed - names
    later = {"tdp_mmu_split_huge_page", "kvm_mmu_zap_collapsible_sptes", "make_spte", "pml_log"}
    assert later <= listed


@needs_kvm
def test_the_players_dirty_log_mode_goes_to_the_live_vm() -> None:
    """A what-if dirty_log_mode is how the live VM logs too (the dirty ring here): the button carries it,
    and under it the kernel still logs what the emulated guest does. Other what-if switches stay the
    engine's."""
    client = _client()
    whatif = "policy=dirty_log_mode=ring,eager_split=true"
    player = client.get(f"/play?scenario=clear-dirty-log&variant=lazy&{whatif}")
    link = re.search(r'<a class="button small" href="([^"]+)" data-real-link', player.text)
    assert link is not None
    assert link.group(1) == "/real?scenario=clear-dirty-log&amp;policy=dirty_log_mode=ring"
    page = client.get("/real?scenario=clear-dirty-log&policy=dirty_log_mode=ring")
    assert page.status_code == 200
    assert re.search(r'data-oracle data-agrees="1"', page.text)
    assert "dirty_log_mode=ring" in page.text


def _traced_run(
    parsed_steps: int, sets: dict[int, list[SpteSet]], created: dict[int, list[TablePage]]
) -> KernelRun:
    """A made-up native, traced run of the worked example: `sets` and `created` by step index."""
    counters = {"pf_taken": 6, "pf_fixed": 6, "insn_emulation": 8}
    logs: list[list[int] | None] = [None] * parsed_steps
    logs[7], logs[10] = [0x250, 0x260, 0x2C0], [0x250, 0x300]
    return KernelRun(
        logs=logs,
        step_stats=[Snapshot(vm={}, vcpus=({"pf_fixed": 1},)) for _ in range(parsed_steps)],
        totals=Snapshot(vm={"pages_4k": 6}, vcpus=({**counters, "exits": 8},)),
        stats_missing=None,
        guest_accesses=8,
        pages_touched=6,
        guest="native",
        traces=[
            TraceStep(tuple(sets.get(i, ())), tuple(created.get(i, ())), (), {}, False)
            for i in range(parsed_steps)
        ],
        trace_missing=None,
    )


def test_the_kernel_s_tables_are_drawn_and_each_difference_from_the_preset_is_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a TDP host `modern` models the kernel's MMU: a kernel leaf whose W differs from modern's leaf
    for the same gfn is a disagreement, marked on the leaf and counted. The 2M leaf that a new level-1
    table replaced is gone from the kernel's tables."""
    steps = len(parse_scenario(spec_example()).steps)
    huge = SpteSet(gfn=0x200, level=2, spte=0x2C0000EE7, table=0x17000, index=1)
    own = SpteSet(gfn=0xFDFF8, level=1, spte=0x2A1A53A25, table=0x10000, index=0x1F8)
    first = SpteSet(gfn=0x250, level=1, spte=0x2C0050E67, table=0x18000, index=0x50)
    read_only = SpteSet(gfn=0x260, level=1, spte=0x2C0060E65, table=0x18000, index=0x60)  # W clear
    run = _traced_run(
        steps, {0: [own], 1: [huge], 4: [first], 5: [read_only]}, {4: [TablePage(0x200, 1, True)]}
    )
    monkeypatch.setattr("live.report.host_mmu", lambda: "tdp")
    _serve_run(monkeypatch, run)
    client = _client()
    code = encode_scenario(spec_example())
    before = client.get("/real", params={"s": code, "tables": "2"}).text
    assert re.search(r'data-kleaf="0x200" data-level="2" data-writable="1" data-new', before)
    after = client.get("/real", params={"s": code, "tables": "6"}).text
    assert 'data-kernel-step="6"' in after and 'data-kleaf="0x200"' not in after
    assert re.search(r'data-kleaf="0x250" data-level="1" data-writable="1">', after)
    assert re.search(r'data-kleaf="0x260" data-level="1" data-writable="0" data-new data-differs>', after)
    assert "≠ W: the kernel&#39;s 0, the model&#39;s 1" in after and 'data-kernel-differing="1"' in after
    assert re.search(r'data-kleaf="0xfdff8"[^>]*data-own>', after)  # the VM's code page: not compared
    assert "a difference is a disagreement with the kernel" in after
    # modern's own tables beside: its leaves for 0x250 and 0x260 drawn, the rest folded and counted.
    model = after[after.index('data-ktree="model"') :]
    assert re.search(r'data-kleaf="0x250" data-level="1" data-writable="1">', model)
    folded = re.findall(r'data-absent="(\d+)"', model)
    assert folded and int(re.findall(r'data-model-only="(\d+)"', model)[0]) == sum(map(int, folded))
    links = re.findall(r'data-kernel-step-link="(\d+)"', after)
    assert links == ["1", "2", "5", "6"]


@needs_kvm
@pytest.mark.skipif(unavailable() is not None, reason=f"no kvmmmu tracepoints: {unavailable()}")
def test_the_real_page_draws_the_2m_spte_and_its_drop_to_one_4k_spte_from_the_kernel_s_trace() -> None:
    """live-kernel.md §3 in the kernel's own tables: after #2 (the first write) a writable 2M leaf for
    gfn 0x200; after #5 (the first write under logging) it is gone, and a new writable 4K leaf for 0x250
    sits at index 0x50 of a level-1 table."""
    client = _client()
    before = client.get("/real?scenario=worked-example&tables=2").text
    assert re.search(r'data-kleaf="0x200" data-level="2" data-writable="1" data-new', before)
    after = client.get("/real?scenario=worked-example&tables=5").text
    assert 'data-kleaf="0x200"' not in after
    pattern = r'<li data-kleaf="0x250" data-level="1" data-writable="1" data-new[^>]*>(.*?)</li>'
    leaf = re.search(pattern, after, re.S)
    assert leaf is not None and "[0x50]" in leaf.group(1)


def test_the_player_s_live_mode_draws_the_kernel_s_tables_at_every_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """live=1 adds a panel with the kernel's tables after the step shown beside the preset's, swapped
    with the other panels at each step and kept by every player link; without it the player offers it."""
    steps = len(parse_scenario(spec_example()).steps)
    huge = SpteSet(gfn=0x200, level=2, spte=0x2C0000EE7, table=0x17000, index=1)
    first = SpteSet(gfn=0x250, level=1, spte=0x2C0050E67, table=0x18000, index=0x50)
    run = _traced_run(steps, {1: [huge], 4: [first]}, {4: [TablePage(0x200, 1, True)]})
    monkeypatch.setattr("app.kernel_panel.kernel_unavailable", lambda settings: None)
    monkeypatch.setattr("app.contexts.kernel_unavailable", lambda settings: None)
    _serve_run(monkeypatch, run)
    client = _client()
    code = encode_scenario(spec_example())
    plain = client.get("/play", params={"s": code, "step": "5"}).text
    assert 'id="panel-kernel"' not in plain and 'data-action="live"' in plain
    page = client.get("/play", params={"s": code, "step": "2", "live": "1"}).text
    panel = page[page.index('id="panel-kernel"') :]
    assert re.search(r'data-kleaf="0x200" data-level="2" data-writable="1" data-new', panel)
    assert 'data-action="live"' not in page  # already on
    assert "&amp;live=1" in re.search(r'data-nav="next"[^>]*', page).group(0)  # type: ignore[union-attr]
    swap = client.get("/play", params={"s": code, "step": "5", "live": "1"}, headers={"HX-Request": "true"})
    assert swap.status_code == 200
    panel = swap.text[swap.text.index('id="panel-kernel"') :]
    assert 'hx-swap-oob="true"' in swap.text[swap.text.index('id="panel-kernel"') - 200 :][:400]
    assert 'data-kleaf="0x200"' not in panel.split("data-ktree=\"model\"")[0]
    assert re.search(r'data-kleaf="0x250" data-level="1" data-writable="1" data-new', panel)
    before = client.get("/play", params={"s": code, "step": "0", "live": "1"}).text
    assert "the kernel has built nothing for the scenario yet" in before
    assert client.get("/play", params={"s": code, "live": "2"}).status_code == 400


def test_the_player_s_live_mode_says_why_the_kernel_is_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.kernel_panel.kernel_unavailable", lambda settings: "cannot open /dev/kvm")
    page = _client().get("/play?scenario=worked-example&step=3&live=1")
    assert page.status_code == 200
    error = re.search(r"<p class=\"notice\" data-kernel-error>(.*?)</p>", page.text)
    assert error is not None and "cannot open /dev/kvm" in error.group(1)
