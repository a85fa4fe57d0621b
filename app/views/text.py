"""Formatting shared by every panel: hex, plurals, gfn lists, the flag texts and spte locations."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from engine.spte import (
    FLAG_BITS,
)

Location = tuple[int, int, int]  # (level, sp gfn, index)


def hx(value: int) -> str:
    return f"{value:#x}"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {many or word + 's'}"


def gfn_list(gfns: Iterable[int], limit: int = 16) -> str:
    items = list(gfns)
    text = " ".join(hx(g) for g in items[:limit])
    if len(items) > limit:
        text += f" … (+{len(items) - limit})"
    return text or "none"


# The texts below depend only on an spte's flag word (engine.spte.flag_word: the contract's flags at fixed
# positions, whatever the layout), and a tree repeats a handful of combinations, so each is written once.


@lru_cache(maxsize=256)
def flags_text(word: int) -> str:
    return " ".join(name for name, bit in FLAG_BITS if word & bit)


@lru_cache(maxsize=256)
def bits_text(word: int) -> str:
    return " ".join(name if on else "·" for name, on in letters(word))


def letters(word: int) -> list[tuple[str, bool]]:
    """Each contract flag of a flag word in order with whether it is set: the tree shows unset ones as a
    dot."""
    return [(name, bool(word & bit)) for name, bit in FLAG_BITS]


def parse_location(text: str) -> Location:
    """`spte=LEVEL:SPGFN:INDEX`, each in hex with or without 0x; raise ValueError when malformed."""
    parts = text.split(":")
    if len(parts) != 3 or len(text) > 64:
        raise ValueError(f"spte={text[:40]!r}: expected LEVEL:SPGFN:INDEX in hex, e.g. 2:0:1")
    level, sp_gfn, index = (int(part, 16) for part in parts)
    if not 1 <= level <= 4 or not 0 <= index < 512 or sp_gfn < 0:
        raise ValueError(f"spte={text[:40]!r}: level must be 1 to 4 and index 0 to 0x1ff")
    return level, sp_gfn, index


def location_param(location: Location) -> str:
    level, sp_gfn, index = location
    return f"{level}:{sp_gfn:x}:{index:x}"
