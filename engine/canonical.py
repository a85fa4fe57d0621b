"""Canonical JSON text, written in pieces: the bytes `json.dumps(obj, sort_keys=True, indent=1,
ensure_ascii=False)` gives, plus a newline.

The contract promises byte-identical results, and the standard library's encoder gives the canonical form.
With an indent it runs in pure Python, one call per value, and it needs the whole object in memory: a
1 GiB memslot's final state is a quarter of a million spte rows of fourteen fields each. This encoder
writes the same text, but a list of plain ints in one join, and a `RawArray` (an array whose items a
producer writes as text, one at a time) without ever holding its items as objects. The tests compare it
with `json.dumps` on every built-in scenario and on random values.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from json.encoder import encode_basestring

# Items of a RawArray are joined into pieces of about this many, so a writer sees few, large strings.
_ITEMS_PER_PIECE = 512


class RawArray:
    """A JSON array whose items are produced as canonical text when it is written.

    `items(depth)` yields each item's text for an item whose opening bracket sits at nesting `depth`
    (the indent of its inner lines is depth + 1 spaces).
    """

    __slots__ = ("items",)

    def __init__(self, items: Callable[[int], Iterable[str]]) -> None:
        self.items = items


def iterdumps(obj: object) -> Iterator[str]:
    """The canonical text of `obj` in pieces; "".join of them equals `dumps(obj)`."""
    yield from _encode(obj, 0)
    yield "\n"


def dumps(obj: object) -> str:
    """The canonical text of `obj`, newline-terminated."""
    return "".join(iterdumps(obj))


def _scalar(obj: object) -> str | None:
    """The text of a JSON scalar, or None for a container. bool before int: True is an int."""
    if isinstance(obj, str):
        return str(encode_basestring(obj))
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        return json.dumps(obj)  # repr, or NaN/Infinity as the standard encoder spells them
    return None


def _encode(obj: object, depth: int) -> Iterator[str]:
    text = _scalar(obj)
    if text is not None:
        yield text
    elif isinstance(obj, dict):
        yield from _encode_dict(obj, depth)
    elif isinstance(obj, list | tuple):
        yield from _encode_list(obj, depth)
    elif isinstance(obj, RawArray):
        yield from _encode_raw(obj, depth)
    else:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _encode_dict(obj: dict[object, object], depth: int) -> Iterator[str]:
    if not obj:
        yield "{}"
        return
    inner = "\n" + " " * (depth + 1)
    separator = "{" + inner
    for key in sorted(obj):  # type: ignore[type-var]
        # Sorted as given, then spelled as a string: the standard encoder's order for non-str keys.
        name = _scalar(key)
        if name is None:
            raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")
        yield separator + (name if isinstance(key, str) else encode_basestring(name)) + ": "
        yield from _encode(obj[key], depth + 1)
        separator = "," + inner
    yield "\n" + " " * depth + "}"


def _encode_list(obj: list[object] | tuple[object, ...], depth: int) -> Iterator[str]:
    if not obj:
        yield "[]"
        return
    inner = "\n" + " " * (depth + 1)
    if set(map(type, obj)) == {int}:  # a list of gfns: one join (bools are not ints here)
        yield "[" + inner + ("," + inner).join(map(int.__repr__, obj)) + "\n" + " " * depth + "]"
        return
    separator = "[" + inner
    for item in obj:
        yield separator
        yield from _encode(item, depth + 1)
        separator = "," + inner
    yield "\n" + " " * depth + "]"


def _encode_raw(obj: RawArray, depth: int) -> Iterator[str]:
    inner = "\n" + " " * (depth + 1)
    joiner = "," + inner
    piece: list[str] = []
    opened = False
    for item in obj.items(depth + 1):
        piece.append(item)
        if len(piece) == _ITEMS_PER_PIECE:
            yield ("," if opened else "[") + inner + joiner.join(piece)
            opened = True
            piece = []
    if piece:
        yield ("," if opened else "[") + inner + joiner.join(piece)
        opened = True
    yield "\n" + " " * depth + "]" if opened else "[]"
