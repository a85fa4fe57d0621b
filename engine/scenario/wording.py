"""The words of a refusal: `ScenarioError`, and pydantic's errors turned into one line that says where
(`step 4 (write): gfn 0x400 is outside every memslot`) and, as data, which step and field.

Every module of the format words its refusals with these helpers, so that a user reads the same kind of
line whatever check refused the scenario.
"""

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from pydantic_core import PydanticCustomError


def refuse(kind: str, text: str) -> PydanticCustomError:
    """A validation error whose message is `text` verbatim, braces and all (user text may hold some)."""
    return PydanticCustomError(kind, "{text}", {"text": text})


class ErrorKind(StrEnum):
    """What is wrong with a refused scenario, from the outside in."""

    SIZE = "size"  # larger than the format allows, refused unread
    ENCODING = "encoding"  # not UTF-8
    SYNTAX = "syntax"  # not JSON, or JSON the format refuses (NaN, a repeated key, too deep)
    SHAPE = "shape"  # not the format's shape: a field missing, unknown or of the wrong type, an unknown op
    VALUE = "value"  # a field's value out of its range or form
    CONSISTENCY = "consistency"  # each value fine, but not together: a gfn outside every slot, ...


class ScenarioError(ValueError):
    """A scenario the engine refuses to run; str() is one line saying where and why.

    Where and what, also as data, so that a shell can point at it without reading the message: `step`,
    the index of the step at fault (None when no step is), `field`, the field at fault: a step's field
    (`gfn`, `slot`, `op`, ...) or a path in the scenario (`memslots[0].npages`), "" when no one field is,
    and `kind` (`ErrorKind`)."""

    default_kind = ErrorKind.VALUE

    def __init__(
        self, message: str, *, step: int | None = None, field: str = "", kind: ErrorKind | None = None
    ) -> None:
        # Keep the message on one line: the CLI prints it as its only line on stderr.
        super().__init__(" ".join(message.splitlines()))
        self.step = step
        self.field = field
        self.kind = self.default_kind if kind is None else kind


def short_repr(value: object, limit: int = 24) -> str:
    """Quote a user's value in a message without letting it run the message over several lines."""
    try:
        text = repr(value)
    except ValueError:  # an int of thousands of digits, which Python will not print
        return "a number too long to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_kind(value: object) -> str:
    """Name a Python value by its JSON type, since that is what the user wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {short_repr(value)}"
    if isinstance(value, str):
        return f"the string {short_repr(value)}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def fail(where: str, what: str, *, step: int | None = None, field: str = "") -> PydanticCustomError:
    """A whole-scenario refusal, already worded with its location (see _message), which it also carries
    as data: the step's index and the field at fault (for the scenario's own fields, `where`)."""
    at = field if step is not None else where
    return PydanticCustomError("sptelab", "{text}", {"text": f"{where}: {what}", "step": step, "field": at})


def _where(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """Turn pydantic's location into ("step 4 (write)", "count") or ("memslots[1].npages", "")."""
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        step = f"step {loc[1]}"
        if len(loc) >= 3:
            step += f" ({loc[2]})"
        field = ".".join(str(part) for part in loc[3:])
        return step, field
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where or "scenario", ""


def _step_of(loc: tuple[int | str, ...]) -> int | None:
    """The index of the step a pydantic location is in, or None."""
    return loc[1] if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) else None


def _field_of(loc: tuple[int | str, ...]) -> str:
    """The field a pydantic location names: a step's own field (`gfn`), else its path in the scenario
    (`memslots[0].npages`), "" for the scenario or a step as a whole."""
    where, field = _where(loc)
    if _step_of(loc) is not None:
        return field
    return "" if where == "scenario" else where


def refusal(error: Mapping[str, Any], known_ops: Iterable[str]) -> ScenarioError:
    """The ScenarioError for pydantic's first error: its one-line message, and where, as data.
    `known_ops` are the ops the format knows, named to a user who wrote another."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    if error["type"] == "sptelab":
        ctx = error.get("ctx") or {}
        return ScenarioError(
            str(error["msg"]),
            step=ctx.get("step"),
            field=str(ctx.get("field") or ""),
            kind=ErrorKind.CONSISTENCY,
        )
    field = _field_of(loc)
    if error["type"] in ("missing", "extra_forbidden"):
        *parent, name = loc
        field = _field_of(tuple(parent))
        if _step_of(loc) is None or not field:
            field = f"{field}.{name}" if field else str(name)
    elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        field = "op"
    return ScenarioError(
        _message(error, tuple(known_ops)), step=_step_of(loc), field=field, kind=_kind_of(error["type"])
    )


# Pydantic's error types that say the scenario's shape is wrong rather than a value.
_SHAPE_TYPES = frozenset(
    {"missing", "extra_forbidden", "union_tag_invalid", "union_tag_not_found", "model_type", "dict_type"}
)


def _kind_of(error_type: str) -> ErrorKind:
    if error_type in _SHAPE_TYPES or error_type.endswith("_type"):
        return ErrorKind.SHAPE
    return ErrorKind.VALUE


def _message(error: Mapping[str, Any], known_ops: tuple[str, ...]) -> str:
    """One line for pydantic's first error, worded for someone editing the JSON."""
    kind: str = error["type"]
    loc: tuple[int | str, ...] = tuple(error["loc"])
    if kind == "sptelab":
        return str(error["msg"])
    if kind in ("missing", "extra_forbidden"):
        *parent, name = loc
        where, field = _where(tuple(parent))
        if field:
            where += f", {field}"
        what = "missing field" if kind == "missing" else "unknown field"
        return f"{where}: {what} {short_repr(name)}"
    where, field = _where(loc)
    value = error.get("input")
    if kind == "union_tag_invalid":
        op = value.get("op") if isinstance(value, Mapping) else None
        known = ", ".join(known_ops)
        if isinstance(op, str):
            return f"{where}: unknown op {short_repr(op, 40)} (known: {known})"
        return f"{where}: op must be a string, not {json_kind(op)} (known: {known})"
    if kind == "union_tag_not_found":
        return f"{where}: missing field 'op' (known: {', '.join(known_ops)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        what = f"must be an object, not {json_kind(value)}"
    elif kind == "list_type":
        what = f"must be a list, not {json_kind(value)}"
    elif kind == "string_type":
        what = f"must be a string, not {json_kind(value)}"
    elif kind == "bool_type":
        what = f"must be true or false, not {json_kind(value)}"
    else:
        what = str(error["msg"]).replace("Input should be", "must be").removeprefix("Value error, ")
    return f"{where}: {field} {what}" if field else f"{where}: {what}"
