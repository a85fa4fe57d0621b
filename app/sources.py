"""Where a page's scenario comes from: a built-in name (`scenario=NAME`) or a share code (`s=CODE`).

Both resolve to the parsed scenario and its canonical share code, which, with the policy, keys the
simulation cache: two links to the same scenario share one run. Parsing a long scenario costs more than
showing a step of it, so resolved sources are kept in a small LRU, with the estimated work of running each
prefix of the scenario (engine.estimate.cumulative_work), which every request checks against the budget
before anything runs.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from app.errors import URL_TOO_LONG_HINT, AppError, bad_request, invalid_scenario, not_found
from engine.codec import CodecError, decode_code, encode_scenario
from engine.estimate import cumulative_work
from engine.scenario import Scenario, ScenarioError, parse_scenario
from scenarios import builtin_names, load_builtin_text


@dataclass(frozen=True, slots=True)
class Source:
    """A resolved scenario: `param` is how URLs name it, ("scenario", NAME) or ("s", CODE); `work[n]` is
    the estimated work of running its first n steps (a compact array: a scenario may have 100 000)."""

    param: tuple[str, str]
    name: str | None
    code: str
    scenario: Scenario
    work: array[int]

    @property
    def total(self) -> int:
        return len(self.scenario.steps)

    def work_to(self, steps: int) -> int:
        """The estimated work of running the first `steps` steps (clamped to the scenario)."""
        return self.work[max(0, min(steps, self.total))]


class SourceCache:
    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], Source] = OrderedDict()

    def resolve(self, name: str | None, code: str | None) -> Source:
        """The scenario named by the query: exactly one of `name` and `code`."""
        if name is not None and code is not None:
            raise bad_request("give either scenario=NAME or s=CODE, not both")
        if name is None and code is None:
            raise bad_request("no scenario given: add scenario=NAME (a built-in) or s=CODE (a share code)")
        key = ("scenario", name) if name is not None else ("s", code or "")
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        source = _load(*key)
        with self._lock:
            self._items[key] = source
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return source


def _load(kind: str, value: str) -> Source:
    if kind == "scenario":
        if value not in builtin_names():
            known = ", ".join(builtin_names()) or "none"
            raise not_found(f"no built-in scenario named {value[:60]!r} (known: {known})")
        scenario = parse_scenario(load_builtin_text(value))
        return Source(("scenario", value), value, encode_scenario(scenario), scenario, _work(scenario))
    scenario = scenario_from_code(value)
    # A code made by another encoder (other key order, defaults left out) still keys the same run. Its
    # scenario may be too large for a canonical code (defaults filled in); such a code is refused too.
    return Source(("s", value), None, share_code(scenario), scenario, _work(scenario))


def _work(scenario: Scenario) -> array[int]:
    return array("q", cumulative_work(scenario))


def share_code(scenario: Scenario) -> str:
    """The scenario's canonical share code; 413 for a scenario too large to have one."""
    try:
        return encode_scenario(scenario)
    except CodecError as error:
        raise AppError(error.status, str(error), hint=URL_TOO_LONG_HINT) from None


def scenario_from_code(code: str) -> Scenario:
    try:
        raw = decode_code(code)
    except CodecError as error:
        raise AppError(error.status, str(error)) from None
    try:
        return parse_scenario(raw)
    except ScenarioError as error:
        raise invalid_scenario(str(error)) from None
