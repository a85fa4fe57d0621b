"""The canonical JSON writer against the standard library: contract §4 promises byte-identical results, and
`json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False)` is the reference for those bytes.

`engine.canonical` exists only to write the same text faster and in pieces (a 1 GiB slot's final state is
a quarter of a million spte rows), so every test here compares its output with `json.dumps` byte for byte:
on random JSON values, and on the results of scenarios, in both the dict form the API uses and the
streamed form the CLI writes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from conftest import PRESET_NAMES, load_scenario, scenario_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_stateful import scenarios

from engine.canonical import RawArray, dumps, iterdumps
from engine.policy import make_policy
from engine.result import present_sptes, result_json
from engine.scenario import parse_scenario
from engine.simulation import Simulation
from scenarios import builtin_names


def reference(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)


@given(values)
def test_any_json_value_is_written_as_json_dumps_writes_it(value: object) -> None:
    assert dumps(value) == reference(value)


@given(st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=50), st.integers(0, 4))
def test_a_list_of_ints_is_written_in_one_piece_with_the_same_bytes(numbers: list[int], depth: int) -> None:
    nested: object = numbers
    for _ in range(depth):
        nested = {"x": nested}
    assert dumps(nested) == reference(nested)


def test_a_list_of_bools_is_not_taken_for_a_list_of_ints() -> None:
    # True is an int to isinstance; the fast path must not write it as 1.
    assert dumps([True, False, 1]) == reference([True, False, 1]) == "[\n true,\n false,\n 1\n]\n"


@pytest.mark.parametrize("count", [0, 1, 511, 512, 513, 1500])
def test_a_raw_array_reads_like_the_list_it_stands_for(count: int) -> None:
    rows = [{"gfn": g, "leaf": g % 2 == 0, "value": f"{g:#x}"} for g in range(count)]

    def items(depth: int) -> list[str]:
        # Each item's own canonical text at its depth, as a producer would write it.
        return [dumps(row).rstrip("\n").replace("\n", "\n" + " " * depth) for row in rows]

    assert dumps({"final": {"sptes": RawArray(items)}}) == reference({"final": {"sptes": rows}})


def test_what_json_cannot_hold_is_refused_as_json_dumps_refuses_it() -> None:
    for bad in ({(1, 2): "tuple key"}, {"a": {1, 2}}, object()):
        with pytest.raises(TypeError):
            reference(bad)
        with pytest.raises(TypeError):
            dumps(bad)


def test_keys_that_are_not_strings_are_spelled_as_json_dumps_spells_them() -> None:
    for keys in ([3, 20, 100], [True, False], [None], [1.5, -2.0]):
        value = {key: "x" for key in keys}
        assert dumps(value) == reference(value)


def test_floats_keep_the_standard_spelling() -> None:
    for number in (0.1, -0.0, 1e300, math.inf, -math.inf, math.nan):
        assert dumps(number) == reference(number)


def test_pieces_join_to_the_whole() -> None:
    value = {"steps": [{"marked_dirty": list(range(3))}], "final": {"sptes": []}}
    assert "".join(iterdumps(value)) == dumps(value) == reference(value)


# --- results ----------------------------------------------------------------------------------------------


def check_result_bytes(scenario: dict[str, Any], preset: str, detail: str) -> None:
    sim = Simulation(parse_scenario(scenario), make_policy(preset), detail=detail)
    steps = sim.run()
    expected = reference(result_json(sim, steps))
    assert dumps(result_json(sim, steps)) == expected
    assert "".join(iterdumps(result_json(sim, steps, stream=True))) == expected


@pytest.mark.parametrize("detail", ["full", "summary"])
@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_result_streams_to_the_bytes_of_json_dumps(name: str, preset: str, detail: str) -> None:
    check_result_bytes(scenario_dict(name), preset, detail)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_steps=8), st.sampled_from(PRESET_NAMES), st.sampled_from(["full", "summary"]))
def test_random_scenario_results_stream_to_the_bytes_of_json_dumps(
    scenario: dict[str, Any], preset: str, detail: str
) -> None:
    check_result_bytes(scenario, preset, detail)


def test_streamed_sptes_are_the_rows_of_present_sptes() -> None:
    sim = Simulation(load_scenario("worked-example"), make_policy("lazy-buggy"))
    sim.run()
    rows = present_sptes(sim.kvm)
    assert any(row["large"] for row in rows) and any(not row["leaf"] for row in rows)
    assert dumps({"sptes": result_json(sim, [], stream=True)["final"]["sptes"]}) == reference({"sptes": rows})  # type: ignore[index]
