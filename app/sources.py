"""Where a page's scenario comes from: a built-in name (`scenario=NAME`) or a share code (`s=CODE`).

Both resolve to the parsed scenario and its canonical share code, which, with the policy, keys the
simulation cache: two links to the same scenario share one run. Parsing a long scenario costs more than
showing a step of it, so resolved sources are kept in a small LRU, with the estimated work of running each
prefix of the scenario (engine.estimate.cumulative_work), which every request checks against the budget
before anything runs.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from app.budget_bytes import ByteBudget, Lru
from app.errors import URL_TOO_LONG_HINT, AppError, bad_request, invalid_scenario, not_found
from engine.codec import CodecError, decode_code, encode_scenario
from engine.estimate import cumulative_work
from engine.ops.registry import op_spec
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


# A resolved source's bytes, fitted to tracemalloc's count of `_load` (long texts, 16 000 steps of two
# kinds, 5 000 distinct steps): the scenario's fixed part, each step's pointer and work estimate, each
# distinct step's model (equal steps share one, see engine.scenario), and the text, per character (four
# bytes for text that is not ASCII, as Python may store it).
SOURCE_BYTES = 8_000
SOURCE_BYTES_PER_STEP = 16
SOURCE_BYTES_PER_DISTINCT_STEP = 1_000


def _text_bytes(text: str) -> int:
    return len(text) if text.isascii() else 4 * len(text)


def source_weight(key: tuple[str, str], source: Source) -> int:
    """A cached source's bytes: its key (the raw share code), canonical code, parsed scenario, work array."""
    scenario = source.scenario
    distinct = {id(step): step for step in scenario.steps}
    told = [note for step in distinct.values() if (note := op_spec(step).note(step)) is not None]
    notes = sum(
        _text_bytes(note.text) + sum(map(_text_bytes, (note.by_preset or {}).values())) for note in told
    )
    return (
        SOURCE_BYTES
        + len(key[1])
        + len(source.code)
        + SOURCE_BYTES_PER_STEP * len(scenario.steps)
        + SOURCE_BYTES_PER_DISTINCT_STEP * len(distinct)
        + _text_bytes(scenario.title)
        + _text_bytes(scenario.description)
        + notes
    )


class SourceCache:
    """Resolved sources by how the query named them, bounded by count and by the app's byte budget."""

    def __init__(self, size: int, budget: ByteBudget | None = None) -> None:
        self._items: Lru[tuple[str, str], Source] = Lru(size, budget, source_weight)

    def resolve(self, name: str | None, code: str | None) -> Source:
        """The scenario named by the query: exactly one of `name` and `code`."""
        if name is not None and code is not None:
            raise bad_request("give either scenario=NAME or s=CODE, not both")
        if name is None and code is None:
            raise bad_request("no scenario given: add scenario=NAME (a built-in) or s=CODE (a share code)")
        key = ("scenario", name) if name is not None else ("s", code or "")
        hit = self._items.get(key)
        if hit is not None:
            return hit
        source = _load(*key)
        self._items.put(key, source)
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
