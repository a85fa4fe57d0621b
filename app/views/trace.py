"""The step's kernel trace: typed events with their explanation and source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.cache import Shown
from app.explain import Context, explain, kernel_source
from app.views.text import hx
from engine.trace import event_json

_HEX_KEYS = {"gfn", "pfn", "sp_gfn", "child_gfn", "index", "gfn_offset"}


def _arg_text(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and key in _HEX_KEYS:
        return hx(value)
    if isinstance(value, list):
        return (
            "["
            + " ".join(hx(v) if isinstance(v, int) else str(v) for v in value[:32])
            + (" …]" if len(value) > 32 else "]")
        )
    if value is None:
        return "none"
    return str(value)


@dataclass(slots=True)
class EventView:
    name: str
    args: list[tuple[str, str]]
    text: str
    source: str
    tone: str  # "" | "good" | "bad": the trace marks the events that decide the story


def _tone(ev: Mapping[str, object]) -> str:
    name = ev.get("name")
    if name == "fast_page_fault":
        if (
            ev.get("result") == "fixed"
            and isinstance(ev.get("sp_level"), int)
            and int(str(ev["sp_level"])) > 1
        ):
            return "bad"
        if ev.get("result") == "bail_large":
            return "good"
    if name == "spte_write_protect" and ev.get("action") == "zap":
        return "note"
    if name == "migrate_verdict":
        return "bad" if ev.get("lost") else "good"
    return ""


@dataclass(slots=True)
class TraceView:
    traced: bool
    events: list[EventView]
    dropped: int
    counts: list[tuple[str, int]]


def trace_view(shown: Shown, variant: str | None) -> TraceView:
    result = shown.result
    if result is None or result.events is None:
        return TraceView(False, [], 0, [])
    ctx = Context(shown.sim.kvm.masks)
    events = []
    counts: dict[str, int] = {}
    for event in result.events:
        data = event_json(event)
        name = str(data["name"])
        counts[name] = counts.get(name, 0) + 1
        args = [(k, _arg_text(k, v)) for k, v in data.items() if k != "name"]
        source = kernel_source(name, variant, shown.sim.kvm.masks.era)
        events.append(EventView(name, args, explain(data, ctx), source, _tone(data)))
    return TraceView(True, events, shown.dropped_events, sorted(counts.items()))
