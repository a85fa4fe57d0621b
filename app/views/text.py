"""Formatting shared by every panel: hex, plurals, gfn lists, the flag texts, each flag by its name and how
it changed, and spte locations."""

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


# What each contract flag means when set and when clear, for the names a screen reader speaks: a letter such
# as "W" alone says little, and set and clear must not differ only in how they look.
BIT_WORDS: dict[str, tuple[str, str]] = {
    "R": ("readable", "not readable"),
    "W": ("writable", "not writable"),
    "X": ("executable", "not executable"),
    "PS": ("large page", "not a large page"),
    "A": ("accessed", "not accessed"),
    "D": ("dirty", "not dirty"),
    "HW": ("host-writable", "not host-writable"),
    "MW": ("MMU-writable", "not MMU-writable"),
}


@lru_cache(maxsize=1024)
def bit_changes(old: int, new: int) -> tuple[tuple[str, bool, bool], ...]:
    """The flags that differ between two flag words, in the contract's order: (name, was set, is set)."""
    return tuple((name, bool(old & bit), bool(new & bit)) for name, bit in FLAG_BITS if (old ^ new) & bit)


def change_text(name: str, was: bool, now: bool) -> str:
    """One flag's change as people read it: `W 1→0`."""
    return f"{name} {int(was)}→{int(now)}"


@lru_cache(maxsize=1024)
def bits_label(word: int, old: int | None = None, danger: str = "") -> str:
    """The accessible name of a row of bit chips: every flag in words, then what changed, e.g.
    `bits: readable, not writable, …; changed: W 1→0`. `danger` names what makes a change dangerous."""
    text = "bits: " + ", ".join(BIT_WORDS[name][0 if on else 1] for name, on in letters(word))
    if old is not None:
        changed = [change_text(name, was, now) for name, was, now in bit_changes(old, word)]
        if changed:
            text += "; changed: " + ", ".join(changed)
    if danger:
        text += f"; dangerous: {danger}"
    return text


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
