"""`/real`: the scenario run on this machine's kernel, its dirty logs beside every preset's.

One row per harvesting step (get_dirty_log, the migration rounds, a ring reset): what the live kernel
returned, and per preset either "same" or exactly which gfns only one side reported.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.deps import Links, StoreDep, compare_variants, parse_policy_param, query_param
from app.livekernel import PAGE_PRESETS, checked_overrides, live_result
from app.pagectx import page
from app.render import base_path
from app.viewmodel import describe_op, preset_description
from engine.scenario import step_to_json

router = APIRouter()


@router.get("/real", response_class=HTMLResponse)
def real_page(request: Request, store: StoreDep) -> Response:
    source = store.sources.resolve(query_param(request, "scenario"), query_param(request, "s"))
    presets = compare_variants(query_param(request, "variants"), PAGE_PRESETS)
    raw_policy = query_param(request, "policy")
    overrides = checked_overrides(parse_policy_param(raw_policy) if raw_policy else {}, presets)
    result = live_result(store.settings, source.code, source.scenario, presets, overrides)
    links = Links(source.param, presets[0], overrides, None, base=base_path(request.scope))
    steps = source.scenario.steps
    differences = {
        name: {d["step"]: d for d in result["compare"][name]["differences"]} for name in presets
    }
    rows = [
        {
            "index": entry["index"],
            "op": describe_op(step_to_json(steps[entry["index"]])),
            "kernel": entry["dirty_log"],
            "cells": [{"variant": name, "diff": differences[name].get(entry["index"])} for name in presets],
            "play_url": links.play(entry["index"] + 1),
        }
        for entry in result["steps"]
        if entry["dirty_log"] is not None
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
    context = {
        "page": "real",
        "title": source.scenario.title or source.name or "Untitled scenario",
        "kernel": result["kernel"],
        "rows": rows,
        "columns": columns,
        "overrides": overrides,
        "play_url": links.play(0),
        "compare_url": links.compare(0),
    }
    return page(request, "real.html", context)
