"""The field types of the format, shared by the scenario's models and every op's model: numbers in
either spelling contract §1 allows, bounded with a message naming the range, checked text, page sizes,
and `_Frozen`, the strict frozen base of every model.

Kept apart from the models so that the op modules (engine/ops/) and the scenario (engine/scenario/models)
can both import them without importing each other.
"""

import copy
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from engine.scenario.cost import (
    MAX_DESCRIPTION_CHARS,
    MAX_NOTE_CHARS,
    MAX_SLOT_ID,
    MAX_TITLE_CHARS,
    MAX_VCPUS,
)
from engine.scenario.wording import json_kind, refuse

# The page sizes a scenario names, and the kernel's level for each (PG_LEVEL_4K = 1 ...).
PAGE_LEVELS: dict[str, int] = {"4K": 1, "2M": 2, "1G": 3}
PageSize = Literal["4K", "2M", "1G"]

# Keep parsed numbers to 64 bits: nothing in the format is wider, and a message must stay one short line.
_MAX_NUMBER = (1 << 64) - 1
_HEX = re.compile(r"0x[0-9a-fA-F]+")


def _parse_number(value: object) -> int:
    """Accept a JSON integer or a "0x" hex string, the two spellings contract §1 allows for numbers.

    Decimal strings are refused rather than guessed at: "200" next to "0x200" would be an easy slip.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _HEX.fullmatch(value):
        if len(value[2:].lstrip("0")) > 16:
            raise PydanticCustomError("number_too_large", "must fit in 64 bits")
        number = int(value, 16)
    else:
        raise refuse(
            "number_type", f'must be an integer or a hex string such as "0x200", not {json_kind(value)}'
        )
    if number < 0:
        raise PydanticCustomError("number_negative", "must not be negative")
    if number > _MAX_NUMBER:
        raise PydanticCustomError("number_too_large", "must fit in 64 bits")
    return number


Number = Annotated[
    int,
    BeforeValidator(_parse_number),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^0x[0-9a-fA-F]{1,16}$"},
            ]
        }
    ),
]


@dataclass(frozen=True, slots=True)
class _Between:
    """Bound a number, with a message that names the range instead of pydantic's generic one."""

    low: int
    high: int | None = None
    hex: bool = False

    def _text(self, value: int) -> str:
        return f"{value:#x}" if self.hex else str(value)

    def _check(self, value: int) -> int:
        if value < self.low or (self.high is not None and value > self.high):
            if self.high is None:
                message = f"must be at least {self._text(self.low)}"
            else:
                message = f"must be between {self._text(self.low)} and {self._text(self.high)}"
            raise refuse("number_range", message)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Copy: WithJsonSchema hands every Number the same dict, and each bound is its own.
        json_schema = copy.deepcopy(handler(schema))
        for branch in json_schema.get("anyOf", []):
            if branch.get("type") == "integer":
                branch["minimum"] = self.low
                if self.high is not None:
                    branch["maximum"] = self.high
        return json_schema


def _check_text(value: str) -> str:
    """Refuse lone surrogates: JSON's \\ud800 escapes allow them, but UTF-8 (and so a share code) cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise refuse(
            "text_unicode",
            f"holds {value[error.start]!r} at position {error.start}, which is not valid Unicode",
        ) from None
    return value


def _check_text_input(value: object) -> object:
    return _check_text(value) if isinstance(value, str) else value


Text = Annotated[str, BeforeValidator(_check_text_input)]


@dataclass(frozen=True, slots=True)
class _MaxChars:
    """Cap a text's length, with a message that names the limit and the length found."""

    limit: int
    what: str

    def _check(self, value: str) -> str:
        if len(value) > self.limit:
            raise refuse(
                "text_too_long",
                f"is {len(value):,} characters long, more than the {self.limit:,} {self.what} may hold",
            )
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "maxLength": self.limit}


Title = Annotated[Text, _MaxChars(MAX_TITLE_CHARS, "a title")]
Description = Annotated[Text, _MaxChars(MAX_DESCRIPTION_CHARS, "a description")]
NoteText = Annotated[Text, _MaxChars(MAX_NOTE_CHARS, "a note")]


class _Frozen(BaseModel):
    # strict: no silent coercion of "true" to True or of 1.0 to 1; numbers go through _parse_number.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# The ids a step names.
VcpuId = Annotated[Number, _Between(0, MAX_VCPUS - 1)]
SlotId = Annotated[Number, _Between(0, MAX_SLOT_ID)]
