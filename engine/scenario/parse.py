"""Reading a scenario: JSON text decoded strictly, the models validated, the first error worded as one
line (engine.scenario.wording), and the format's JSON Schema for editors. This module reads no files: the
shells hand it text, bytes or an already-decoded object.
"""

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError

from engine.ops.registry import STEP_OPS, STEP_TYPES
from engine.scenario.cost import (
    DEFAULT_BASE_PFN,
    DEFAULT_BASE_PFN_STRIDE,
    MAX_MEMSLOTS,
    MAX_SCENARIO_BYTES,
    MAX_STEPS,
    ScenarioTooLargeError,
)
from engine.scenario.models import VERSION, Scenario
from engine.scenario.wording import ErrorKind, ScenarioError, json_kind, refusal, short_repr


class _JsonRefusedError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads would keep the last of two "op" keys; a scenario that says two things is refused instead.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _JsonRefusedError(
                f"scenario: not valid JSON: the key {short_repr(key)} appears twice in one object"
            )
        result[key] = value
    return result


def _no_constant(name: str) -> object:
    raise _JsonRefusedError(f"scenario: not valid JSON: {name} is not a JSON number")


def loads_json(data: str | bytes) -> object:
    """Decode JSON text strictly (no NaN, no repeated keys), refusing oversized or hostile input cleanly."""
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioTooLargeError(f"scenario: larger than {MAX_SCENARIO_BYTES} bytes (1 MiB)")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ScenarioError(
                f"scenario: not valid UTF-8 (byte {error.start})", kind=ErrorKind.ENCODING
            ) from None
    else:
        text = data
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SCENARIO_BYTES:
            raise ScenarioTooLargeError(f"scenario: larger than {MAX_SCENARIO_BYTES} bytes (1 MiB)")
    # Editors on some systems start a UTF-8 file with a byte-order mark; JSON allows ignoring it.
    text = text.removeprefix("\ufeff")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise ScenarioError(
            f"scenario: not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}",
            kind=ErrorKind.SYNTAX,
        ) from None
    except _JsonRefusedError as error:
        raise ScenarioError(str(error), kind=ErrorKind.SYNTAX) from None
    except RecursionError:
        raise ScenarioError("scenario: not valid JSON: nested too deeply", kind=ErrorKind.SYNTAX) from None
    except ValueError:
        # Python refuses to convert integers of thousands of digits; no field could hold one anyway.
        raise ScenarioError(
            "scenario: not valid JSON: a number has too many digits", kind=ErrorKind.SYNTAX
        ) from None


def parse_scenario(data: str | bytes | Mapping[str, object]) -> Scenario:
    """Parse and check a scenario given as JSON text or bytes, or as an already-decoded object.

    Raise ScenarioError, and nothing else, for anything a user could have written.
    """
    raw = loads_json(data) if isinstance(data, str | bytes) else data
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"scenario: must be a JSON object, not {json_kind(raw)}", kind=ErrorKind.SHAPE)
    try:
        return Scenario.model_validate(dict(raw))
    except ValidationError as error:
        raise refusal(error.errors(include_url=False)[0], STEP_OPS) from None
    except RecursionError:
        raise ScenarioError("scenario: nested too deeply", kind=ErrorKind.SHAPE) from None


def under_mmu(scenario: Scenario, mmu: Literal["tdp", "shadow"]) -> Scenario:
    """The same scenario run under the other MMU (`vm.mmu` switched), checked whole again: the same
    accesses under TDP and under shadow paging, side by side. Raise ScenarioError when it cannot run
    there (shadow paging without the guest's tables, a guest paging op under TDP)."""
    if mmu == scenario.vm.mmu:
        return scenario
    return parse_scenario(scenario.with_mmu(mmu))


def scenario_json_schema() -> dict[str, object]:
    """A JSON Schema of the format, for editors; parse_scenario's checks go further than it can say."""
    schema: dict[str, Any] = Scenario.model_json_schema()
    # Memslot.base_pfn is required of the model but optional in the format: Scenario supplies it.
    memslot = schema["$defs"]["Memslot"]
    memslot["required"] = [name for name in memslot["required"] if name != "base_pfn"]
    memslot["properties"]["base_pfn"]["description"] = (
        f"default {DEFAULT_BASE_PFN:#x} + {DEFAULT_BASE_PFN_STRIDE:#x} × position in the list"
    )
    schema["properties"]["version"] = {"const": VERSION, "type": "integer", "title": "Version"}
    schema["properties"]["memslots"] |= {"minItems": 1, "maxItems": MAX_MEMSLOTS}
    schema["properties"]["steps"] |= {"maxItems": MAX_STEPS}
    # `op` has a default only so that Python code can write ReadStep(gfn=...); JSON must name it.
    for step_type in STEP_TYPES:
        definition = schema["$defs"][step_type.__name__]
        definition["required"] = ["op", *definition.get("required", [])]
    return schema
