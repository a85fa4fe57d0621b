"""Random shadow-paging scenarios against the invariants, under every preset.

Hypothesis draws a guest (its address spaces, its mappings, where its tables go) over one or two
memslots, and a sequence of steps: accesses by gfn and by guest-virtual address, stores of random PTEs
into the guest's tables (table pages pointing at data, at other tables, at themselves), INVLPG, CR3
switches, dirty logging on and off, GET_DIRTY_LOG whole or split around other steps, zaps and flushes.
For a guest with paging on no preset may break an invariant: the fast path never runs for it, so the
bug of caf6900f cannot arise, and 3.14's and 3.16's flush rules are each safe with their own flush
placement (shadow-mmu.md §1, §4). The full state check must also agree with the per-step checks.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from engine.policy import make_policy
from engine.scenario import parse_scenario
from engine.shadow_invariants import check_shadow_state
from engine.simulation import Simulation

PRESETS = ("zap", "lazy-buggy", "lazy", "modern")
P, W, U, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    host_page = draw(st.sampled_from(["4K", "2M"]))
    npages = draw(st.sampled_from([0x200, 0x400]))
    slot = {"id": 1, "base_gfn": "0x200", "npages": npages, "host_page": host_page}
    end = 0x200 + npages
    gfns = st.integers(0x200, end - 3)  # room for 3 accesses
    tables = 0x200
    spaces: list[dict[str, Any]] = [{}]
    if draw(st.booleans()):
        # A second space mapping part of the slot at another address, 4K and 2M pages, some clean.
        maps = [{"gfn": "0x200", "npages": 512, "page": "2M"}]
        if npages == 0x400:
            maps.append({"gva": "0x40000000", "gfn": "0x400", "npages": 512, "page": "2M",
                         "dirty": draw(st.booleans())})  # fmt: skip
        maps.append({"gva": "0x80000000", "gfn": hex(draw(gfns)), "npages": 1, "dirty": draw(st.booleans()),
                     "writable": draw(st.booleans())})  # fmt: skip
        spaces.append({"maps": maps})
    table_gfns = st.integers(tables, tables + 8)
    gvas = st.one_of(
        st.integers(0x200, end - 1).map(lambda g: g << 12),
        st.sampled_from([0x40000000, 0x40010000, 0x80000000, 0x600000, 0xC0000000]),
    )
    pte = st.builds(
        lambda gfn, bits, large: (gfn << 12) | P | bits | (PS if large else 0),
        st.one_of(gfns, table_gfns),
        st.sampled_from([W | U | A | D, W | U | A, U | A, W | U, W | U | A | D]),
        st.booleans(),
    )
    vcpus = draw(st.integers(1, 2))
    vcpu = st.integers(0, vcpus - 1)
    step = st.one_of(
        st.builds(lambda op, g, c, v: {"op": op, "gfn": hex(g), "count": c, "vcpu": v},
                  st.sampled_from(["read", "write"]), gfns, st.integers(1, 3), vcpu),
        st.builds(lambda op, g, v: {"op": op, "gva": hex(g), "vcpu": v},
                  st.sampled_from(["read", "write"]), gvas, vcpu),
        st.builds(lambda t, i, p, v: {"op": "write_gpte", "table": hex(t), "index": i, "pte": hex(p),
                                      "vcpu": v}, table_gfns, st.sampled_from([0, 1, 2, 3, 8, 0x100, 0x1ff]),
                  pte, vcpu),
        st.builds(lambda g, v: {"op": "invlpg", "gva": hex(g), "vcpu": v}, gvas, vcpu),
        st.builds(lambda s, v: {"op": "set_cr3", "space": s, "vcpu": v}, st.integers(0, len(spaces) - 1),
                  vcpu),
        st.sampled_from([{"op": "flush_tlb"}, {"op": "zap_all"}]),
        st.just({"op": "logging"}),
    )  # fmt: skip
    steps: list[dict[str, Any]] = []
    logged = False
    split = False
    for drawn in draw(st.lists(step, min_size=1, max_size=14)):
        raw = drawn
        if drawn["op"] == "logging":
            if not logged:
                raw = {"op": "enable_dirty_log", "slot": 1}
                logged = True
            elif split:
                raw = {"op": "get_dirty_log_end", "slot": 1}
                split = False
            else:
                choice = draw(st.sampled_from(["get", "split", "disable"]))
                if choice == "disable":
                    raw = {"op": "disable_dirty_log", "slot": 1}
                    logged = False
                else:
                    raw = {"op": "get_dirty_log", "slot": 1, "split": choice == "split"}
                    split = choice == "split"
        steps.append(raw)
    if split:
        steps.append({"op": "get_dirty_log_end", "slot": 1})
    if logged:
        steps.append({"op": "get_dirty_log", "slot": 1})
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "vm": {"mmu": "shadow", "vcpus": vcpus},
        "memslots": [slot],
        "guest": {"tables_at": hex(tables), "spaces": spaces},
        "steps": steps,
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_no_preset_breaks_an_invariant_for_a_paging_guest(data: dict[str, Any]) -> None:
    note(json.dumps(data))
    scenario = parse_scenario(data)
    for preset in PRESETS:
        sim = Simulation(scenario, make_policy(preset), detail="summary")
        while not sim.done:
            result = sim.step()
            assert result.violations == [], (preset, result.index, result.violations)
            # The per-step checks look only where the step acted: the whole state must agree.
            assert check_shadow_state(sim.kvm, result.index) == []
