"""Shared helpers for the engine tests: load and run scenarios, look sptes up, run on every preset.

Engine tests import the helpers by name (`from conftest import run_scenario`); pytest puts this directory
on the import path because `tests/` is not a package.

Every engine test runs on every preset (style.md, rule 8). Take the `preset` fixture for a test whose
expectation is the same everywhere, or `per_preset({...})` for one whose expected value differs per
preset, as the spec's section 7 tables do. A test that leaves a preset out says why, in `per_preset`'s
`omitted` argument.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from engine.policy import PRESETS, make_policy
from engine.result import result_json
from engine.scenario import Scenario, parse_scenario
from engine.simulation import Simulation, StepResult

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"
GOLDEN = Path(__file__).resolve().parent / "golden"

PRESET_NAMES: list[str] = list(PRESETS)


# §7.2 of the spec with its own ioctls (enable_dirty_log / get_dirty_log), not a migration loop.
_SPEC_STEPS: list[dict[str, Any]] = [
    {"op": "read", "gfn": "0x210"},
    {"op": "write", "gfn": "0x2a0"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "read", "gfn": "0x2c0"},
    {"op": "write", "gfn": "0x250"},
    {"op": "write", "gfn": "0x260"},
    {"op": "write", "gfn": "0x2c0"},
    {"op": "get_dirty_log", "slot": 1},
    {"op": "write", "gfn": "0x250"},
    {"op": "write", "gfn": "0x300"},
    {"op": "get_dirty_log", "slot": 1},
]


# The worked example's memslot (spec §7.1): gfns 0x200-0x3ff on one writable 2 MiB host page at 0x80000.
SLOT_2M: dict[str, Any] = {
    "id": 1, "base_gfn": "0x200", "npages": 512, "host_page": "2M", "base_pfn": "0x80000"
}

# Spec §1.1 bits. A leaf built by a fault always has R, X and the write-back memory type with IPAT (§1.3).
W, PS, A, D, HW, MW = 1 << 1, 1 << 7, 1 << 8, 1 << 9, 1 << 10, 1 << 11
LEAF = 1 | 1 << 2 | 6 << 3 | 1 << 6


def leaf(pfn: int, bits: int) -> int:
    """A leaf spte as the fault path builds it, mapping `pfn` with `bits` besides the fixed ones."""
    return pfn << 12 | LEAF | bits


class Layout(NamedTuple):
    """One kernel generation's EPT spte layout, from the spec: §1.1/§1.3 for 3.x, §5.7's row "spte
    encoding" for 6.x (A = bit 8, D = 9, MMU-present = 11, host-writable = 57, MMU-writable = 58,
    suppress-#VE = 63). 6.12's spte.h adds what the spec leaves implicit: suppress-#VE is part of
    shadow_present_mask, so every spte carries it, and a non-present spte is that bit alone
    (SHADOW_NONPRESENT_VALUE); a non-leaf carries MMU-present like a leaf (make_nonleaf_spte)."""

    name: str
    W: int
    PS: int
    A: int
    D: int
    HW: int
    MW: int
    present: int  # bits every present spte carries besides R, X and (leaves) the memory type
    nonpresent: int

    def leaf(self, pfn: int, bits: int) -> int:
        """A leaf mapping `pfn` with `bits` (this layout's) besides R, X, WB memory type and IPAT."""
        return pfn << 12 | LEAF | self.present | bits

    def nonleaf(self, table_pfn: int) -> int:
        """A pointer to the table at `table_pfn`: R W X and A (§1.3), plus the layout's present bits."""
        return table_pfn << 12 | 0x107 | self.present


LAYOUT_3X = Layout("3.x", W, PS, A, D, HW, MW, 0, 0)
LAYOUT_6X = Layout("6.x", W, PS, A, D, 1 << 57, 1 << 58, 1 << 11 | 1 << 63, 1 << 63)


def layout(preset: str) -> Layout:
    """The layout of the kernel generation a preset stands for: 6.x for `modern`, 3.x for the others."""
    return LAYOUT_6X if preset == "modern" else LAYOUT_3X


def spec_example(rounds: int = 2) -> dict[str, Any]:
    """The spec's worked example (§7.1 setup, §7.2 steps) as a fresh scenario dict, ending after the
    first GET_DIRTY_LOG round (`rounds=1`, eight steps) or the second (eleven steps)."""
    steps = _SPEC_STEPS[:8] if rounds == 1 else _SPEC_STEPS
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "title": "t",
        "vm": {"vcpus": 1, "max_page_level": "2M", "ept_ad": True},
        "memslots": [
            {
                "id": 1,
                "base_gfn": "0x200",
                "npages": 512,
                "host_page": "2M",
                "base_pfn": "0x80000",
                "host_writable": True,
            }
        ],
        "steps": copy.deepcopy(steps),
    }


def scenario_dict(name: str) -> dict[str, Any]:
    """The raw JSON of a built-in scenario (`scenarios/NAME.json`) or a test one
    (`tests/golden/NAME.scenario.json`), as a fresh dict the caller may edit."""
    for path in (SCENARIOS / f"{name}.json", GOLDEN / f"{name}.scenario.json"):
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return data
    raise FileNotFoundError(f"no scenario named {name!r} in {SCENARIOS} or {GOLDEN}")


def load_scenario(name: str) -> Scenario:
    return parse_scenario(scenario_dict(name))


def make_scenario(
    memslots: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]], **vm: Any
) -> Scenario:
    """A scenario built in a test: `vm` keywords override the VM defaults (vcpus, max_page_level, ept_ad)."""
    return parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "title": "test",
            "vm": {"vcpus": 1, "max_page_level": "2M", "ept_ad": True, **vm},
            "memslots": [dict(slot) for slot in memslots],
            "steps": [dict(step) for step in steps],
        }
    )


def run_scenario(
    scenario: Scenario | Mapping[str, Any] | str,
    variant: str,
    overrides: Mapping[str, str | bool] | None = None,
    detail: str = "full",
) -> tuple[Simulation, list[StepResult], dict[str, Any]]:
    """Run a whole scenario (a Scenario, a dict, or a scenario name) under a preset plus overrides.

    Returns the simulation (for its final state), the step results, and the contract §4 result dict.
    """
    if isinstance(scenario, str):
        scenario = load_scenario(scenario)
    elif not isinstance(scenario, Scenario):
        scenario = parse_scenario(copy.deepcopy(dict(scenario)))
    sim = Simulation(scenario, make_policy(variant, overrides), detail=detail)
    steps = sim.run()
    return sim, steps, result_json(sim, steps)


def spte_at(
    result_or_sptes: Mapping[str, Any] | Sequence[Mapping[str, Any]], level: int, sp_gfn: int, index: int
) -> Mapping[str, Any] | None:
    """The present spte at `index` of the level-`level` sp whose first gfn is `sp_gfn`, or None.

    Takes a result dict (its final.sptes) or a list of spte dicts (`engine.result.present_sptes`).
    """
    sptes = result_or_sptes["final"]["sptes"] if isinstance(result_or_sptes, Mapping) else result_or_sptes
    for spte in sptes:
        if (spte["level"], spte["sp_gfn"], spte["index"]) == (level, sp_gfn, index):
            return spte
    return None


def per_preset(expected: Mapping[str, Any], omitted: Mapping[str, str] | None = None) -> list[Any]:
    """Parameters (preset, expected) for `pytest.mark.parametrize`, one per preset.

    Every preset must be given an expectation, or be named in `omitted` with the reason it is left out.
    """
    omitted = omitted or {}
    missing = [name for name in PRESET_NAMES if name not in expected and name not in omitted]
    unknown = [name for name in [*expected, *omitted] if name not in PRESET_NAMES]
    if missing or unknown:
        raise ValueError(f"per_preset: no expectation for {missing}, unknown presets {unknown}")
    return [pytest.param(name, expected[name], id=name) for name in PRESET_NAMES if name in expected]


@pytest.fixture(params=PRESET_NAMES)
def preset(request: pytest.FixtureRequest) -> str:
    """Each preset in turn, for tests whose expectation holds for all of them."""
    name: str = request.param
    return name


def http_scope(
    application: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b""
) -> dict[str, Any]:
    """The ASGI scope of one plain HTTP/1.1 request from loopback: for tests that call the app directly,
    to send what a test client would tidy up (raw query bytes, a body in chunks)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "app": application,
    }


class AsgiClient:
    """The two ends of one request that a test sends straight into the app: `receive` hands over the body
    in `chunks`, then, as a connected client does, says nothing more until the answer is complete, and
    only then that the connection closed (the app takes a disconnect before that as its client gone);
    `send` collects the answer. `read` counts the body bytes the app asked for."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.pending = list(chunks)
        self.read = 0
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self._answered = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.pending:
            chunk = self.pending.pop(0)
            self.read += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.pending)}
        await self._answered.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                self._answered.set()


# Forty writable 2M leaves in one level-2 table, then logging enabled: under zap (3.14) every one is
# zapped in the second step. The big-state and fold-label tests read how the page sums them up.
FORTY_2M: dict[str, Any] = {
    "format": "sptelab-scenario",
    "version": 1,
    "vm": {"max_page_level": "2M"},
    "memslots": [{"id": 1, "base_gfn": 0, "npages": 40 * 512, "host_page": "2M", "base_pfn": "0x80000"}],
    "steps": [
        {"op": "write", "gfn": 0, "count": 40, "stride": 512},
        {"op": "enable_dirty_log", "slot": 1},
    ],
}
