"""The step's kernel trace: typed events with their explanation and source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

from app.explain.context import Context
from app.explain.events import explain
from app.explain.kernel_files import CPU_SHADOW, kernel_source
from app.replay import Shown
from app.views.text import hx
from engine.trace import call_order, event_json

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
    depth: int = 0  # calls between the step's entry and this function: 0 for what the step called
    count: int = 1  # alike calls shown as this one line (×N), each with everything they called


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


# Fields that differ from one call of a run to the next and are summarised as a range; every other field
# (the path taken, the result, the caller, a flag) must be the same for calls to fold.
_RANGED = _HEX_KEYS | {"old", "new", "spte", "child", "vcpu", "pages", "sptes", "rmaps", "entries_dropped"}
_RANGED |= {"mask", "gfns", "cleared", "split", "zapped", "length", "offset", "slot_offset"}


@dataclass(slots=True)
class _Node:
    """One event in call order with everything it called."""

    index: int
    data: dict[str, object]
    children: list[_Node]


def _tree(pairs: list[tuple[int, int]], data: list[dict[str, object]]) -> list[_Node]:
    top: list[_Node] = []
    path: list[_Node] = []
    for index, depth in pairs:
        node = _Node(index, data[index], [])
        del path[depth:]
        (path[-1].children if path else top).append(node)
        path.append(node)
    return top


def _shape(node: _Node) -> tuple[object, ...]:
    """What calls must share to fold: the function, the fields that are not ranges, the same calls below."""
    fixed = tuple((k, repr(v)) for k, v in node.data.items() if k not in _RANGED)
    return (fixed, tuple(_shape(child) for child in node.children))


def _number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def _summary(key: str, values: list[object]) -> str:
    """A field over the calls of a run: its value when all agree, else its range `0x200–0x206`."""
    first = values[0]
    if all(v == first for v in values):
        return _arg_text(key, first)
    numbers = [_number(v) for v in values]
    known = [n for n in numbers if n is not None]
    if len(known) == len(values):
        hexed = key in _HEX_KEYS or isinstance(first, str)

        def show(n: int) -> str:
            return hx(n) if hexed else str(n)

        distinct = sorted(set(known))
        low, high = distinct[0], distinct[-1]
        steps = {b - a for a, b in pairwise(distinct)}
        if steps == {1}:
            return f"{show(low)}–{show(high)}"
        if len(steps) == 1:  # every eighth page, say: the range alone would claim the pages between
            return f"{show(low)}–{show(high)} every {show(steps.pop())}"
        return f"{show(low)}–{show(high)} ({len(distinct)} values)"
    return "various"


def _flatten(nodes: list[_Node], depth: int, out: list[tuple[_Node, list[_Node], int, bool]]) -> None:
    """Consecutive calls of one shape become one line carrying all of them; their callees are shown once,
    each summarised over the run in the same way."""
    i = 0
    while i < len(nodes):
        shape = _shape(nodes[i])
        j = i + 1
        while j < len(nodes) and _shape(nodes[j]) == shape:
            j += 1
        _emit(nodes[i:j], depth, out)
        i = j


def _emit(run: list[_Node], depth: int, out: list[tuple[_Node, list[_Node], int, bool]]) -> None:
    out.append((run[0], run, depth, True))  # the head of a run: what the step (or a caller) did N times
    if len(run) == 1:
        _flatten(run[0].children, depth + 1, out)
        return
    # The same shape: the k-th callee of each call lines up with the k-th callee of the first.
    for k, child in enumerate(run[0].children):
        _emit_aligned(child, [node.children[k] for node in run], depth + 1, out)


def _emit_aligned(
    first: _Node, members: list[_Node], depth: int, out: list[tuple[_Node, list[_Node], int, bool]]
) -> None:
    out.append((first, members, depth, False))
    for k, child in enumerate(first.children):
        _emit_aligned(child, [m.children[k] for m in members], depth + 1, out)


def trace_view(shown: Shown, variant: str | None) -> TraceView:
    result = shown.result
    if result is None or result.events is None:
        return TraceView(False, [], 0, [])
    ctx = Context(shown.sim.kvm.masks)
    data = [event_json(event) for event in result.events]
    counts: dict[str, int] = {}
    for item in data:
        name = str(item["name"])
        counts[name] = counts.get(name, 0) + 1
    pairs = call_order(result.events, result.calls or [])
    lines: list[tuple[_Node, list[_Node], int, bool]] = []
    _flatten(_tree(pairs, data), 0, lines)
    events = []
    for first, members, depth, head in lines:
        item = first.data
        name = str(item["name"])
        source = kernel_source(name, variant, shown.sim.kvm.masks.era)
        if name == "guest_access" and shown.sim.kvm.shadow:
            source = CPU_SHADOW
        text = explain(item, ctx)
        if len(members) == 1:
            args = [(k, _arg_text(k, v)) for k, v in item.items() if k != "name"]
        else:
            args = [(k, _summary(k, [m.data.get(k) for m in members])) for k in item if k != "name"]
            if head:  # the callees under it, shown once for all, say only ×N
                text = f"{len(members)} alike calls; the first: {text}"
        events.append(EventView(name, args, text, source, _tone(item), depth, len(members)))
    return TraceView(True, events, shown.dropped_events, sorted(counts.items()))
