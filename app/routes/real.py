"""`/real`: the scenario run on this machine's kernel, what the kernel ran it with, and its dirty logs
beside the emulated guest's and every preset's.

First what the run exercised (`live` of the result: the kernel's MMU, or its instruction emulator, decided
from its statistics), then one row per harvesting step (get_dirty_log, the migration rounds, a ring
reset): what the live kernel returned, whether the engine's emulated guest returned the same, and per
preset either "same" or exactly which gfns only one side reported. Only when the kernel's MMU ran the
guest is a preset said to agree with the kernel; otherwise a preset's column is what its MMU would log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.build import built
from app.errors import bad_request
from app.htmx import page
from app.links import Links
from app.livekernel import PAGE_PRESETS, checked_overrides, live_result
from app.query import compare_variants, parse_policy_param, query_param
from app.render import base_path
from app.store import StoreDep
from app.views.kernel_tree import CONTRAST_PRESET, kernel_tree_view, preset_state
from app.views.presets import preset_description
from app.workshop import workshop_off
from engine.ops.registry import Step, describe
from engine.policy import make_policy
from live.backend import Guest
from live.tracefs import TraceStep

router = APIRouter()

# The counters the page shows, over the run and per step: the vCPUs' (summed over vCPUs), then the VM's.
VCPU_COUNTERS = ("pf_taken", "pf_fixed", "insn_emulation", "exits")
VM_COUNTERS = ("pages_4k", "pages_2m", "mmu_shadow_zapped", "remote_tlb_flush")
# Steps listed in the per-step counters table at most (the JSON has them all).
STEP_ROWS = 64


def _counters(stats: dict[str, Any]) -> dict[str, int]:
    """The shown counters of a stats object ({"vm", "vcpus"}), vCPU counters summed; absent ones left out."""
    vcpus = stats["vcpus"].values()
    shown = {
        name: sum(c.get(name, 0) for c in vcpus) for name in VCPU_COUNTERS if any(name in c for c in vcpus)
    }
    shown.update({name: stats["vm"][name] for name in VM_COUNTERS if name in stats["vm"]})
    return shown


def _step_counters(result: dict[str, Any], steps: Sequence[Step]) -> tuple[list[dict[str, Any]], int]:
    """Per step whose shown counters changed: its index, op and the changes; capped at STEP_ROWS."""
    rows = []
    for entry in result["steps"]:
        changed = {name: value for name, value in _counters(entry["live"]["stats"]).items() if value}
        if changed:
            rows.append(
                {
                    "index": entry["index"],
                    "op": describe(steps[entry["index"]]),
                    "changed": changed,
                }
            )
    return rows[:STEP_ROWS], len(rows)


@router.get(
    "/real",
    response_class=HTMLResponse,
    dependencies=[workshop_off("/real (running scenarios on this machine's kernel)")],
)
async def real_page(request: Request, store: StoreDep) -> Response:
    # The run waits on the kernel, not on the interpreter: admitted like a build, but takes no turns.
    return await built(request, lambda: _real_page(request, store), turns=False)


def _real_page(request: Request, store: StoreDep) -> Response:
    source = store.sources.resolve(query_param(request, "scenario"), query_param(request, "s"))
    presets = compare_variants(query_param(request, "variants"), PAGE_PRESETS)
    raw_policy = query_param(request, "policy")
    overrides = checked_overrides(parse_policy_param(raw_policy) if raw_policy else {}, presets)
    guest = _guest(request)
    result = live_result(store.settings, source.code, source.scenario, presets, overrides, guest)
    links = Links(source.param, presets[0], overrides, None, base=base_path(request.scope))
    steps = source.scenario.steps
    live = result["live"]
    oracle = {d["step"]: d for d in live["oracle"]["differences"]}
    differences = {name: {d["step"]: d for d in result["compare"][name]["differences"]} for name in presets}
    rows = [
        {
            "index": entry["index"],
            "op": describe(steps[entry["index"]]),
            "kernel": entry["dirty_log"],
            "oracle": oracle.get(entry["index"]),
            "cells": [{"variant": name, "diff": differences[name].get(entry["index"])} for name in presets],
            "play_url": links.play(entry["index"] + 1),
        }
        for entry in result["steps"]
        if entry["dirty_log"] is not None or entry["index"] in oracle
    ]
    columns = [
        {
            "variant": name,
            "description": preset_description(name),
            "agrees": result["compare"][name]["agrees"],
            "differing": len(differences[name]),
            "play_url": links.with_variant(name).play(0),
        }
        for name in presets
    ]
    step_rows, step_rows_total = _step_counters(result, steps)
    shown = _tables_step(request, len(steps))
    model = live["host_preset"] or CONTRAST_PRESET
    # A run of its own: this page waits on the kernel outside the room's turns, so it leaves the
    # player's shared run cache alone.
    sim, last = preset_state(source.scenario, make_policy(model, overrides), shown)
    tree = kernel_tree_view(result, source.scenario, shown, (model, sim, last))
    context = {
        "page": "real",
        "title": source.scenario.title or source.name or "Untitled scenario",
        "kernel": result["kernel"],
        "live": live,
        # Compared: the presets were checked against the kernel's MMU (a preset models the host's MMU).
        "native": live["checked"] == "mmu",
        "mmu_exercised": bool(live["mmu_exercised"]),
        "oracle_differing": len(oracle),
        "totals": _counters(live["stats"]),
        "counter_names": [*VCPU_COUNTERS, *VM_COUNTERS],
        "step_rows": step_rows,
        "step_rows_total": step_rows_total,
        "rows": rows,
        "columns": columns,
        "overrides": overrides,
        "play_url": links.play(0),
        "compare_url": links.compare(0),
        "other_guest": _other_guest_url(request, guest),
        "tree": tree,
        "tree_steps": _tree_steps(request, result, steps, shown),
    }
    return page(request, "real.html", context)


def _tables_step(request: Request, total: int) -> int:
    """`tables=N`: the kernel's tables after op #N (1..total), by default after the last."""
    raw = query_param(request, "tables")
    if not raw:
        return total
    if not raw.isdigit() or not 1 <= int(raw) <= total:
        raise bad_request(f"tables={raw[:20]!r}: a step from 1 to {total}")
    return int(raw)


def _tree_steps(
    request: Request, result: dict[str, Any], steps: Sequence[Step], shown: int
) -> list[dict[str, Any]]:
    """A link per step whose trace changed the kernel's tables, the one shown marked."""
    links = []
    for entry in result["steps"]:
        if "sptes_set" not in entry["live"] or not TraceStep.from_json(entry["live"]).changes_tables:
            continue
        number = entry["index"] + 1
        links.append(
            {
                "number": number,
                "op": describe(steps[entry["index"]]),
                "url": _this_page(request, "tables", str(number)) + "#kernel-tables",
                "current": number == shown,
            }
        )
    return links


def _this_page(request: Request, name: str, value: str | None) -> str:
    """This page with the parameter `name` set to `value` (or left out: None), every other one kept."""
    params = [(key, kept) for key, kept in request.query_params.multi_items() if key != name]
    if value is not None:
        params.append((name, value))
    return f"{base_path(request.scope)}/real?{urlencode(params)}"


def _guest(request: Request) -> Guest:
    """The `guest` parameter: native (the default) or emulated."""
    value = query_param(request, "guest") or "native"
    if value == "native":
        return "native"
    if value == "emulated":
        return "emulated"
    raise bad_request(f"guest={value[:40]!r}: the live VM's guest is native or emulated")


def _other_guest_url(request: Request, guest: Guest) -> str:
    """This page with the other guest: the same scenario and presets, run the other way."""
    return _this_page(request, "guest", "emulated" if guest == "native" else None)
