"""What the player must show for the spec's worked example (kvm-mmu.md §7), per preset and step.

Every value comes from the spec's tables and constants, never from a run of the app or the engine.
`scenarios/worked-example.json` drives §7.2 through a live migration, and the player's `step=N` shows the
state after the first N scenario steps, so:

    step=N   1          2           3              4          5           6           7
    index    0          1           2              3          4           5           6
    op       read 0x210 write 0x2a0 migrate_begin  read 0x2c0 write 0x250 write 0x260 write 0x2c0
    §7.2     step 1     step 2      step 3         step 4     step 5      step 6 (first write, then second)

    step=N   8              9           10          11             12
    index    7              8           9           10             11
    op       migrate_round  write 0x250 write 0x300 migrate_round  migrate_end
    §7.2     step 7         step 8      step 8      step 9         step 9, last paragraph

The spte names follow §7.1: "L2[1]" is index 1 of the level-2 sp with gfn 0; "L1[i]" is index i of the
level-1 sp with gfn 0x200, mapping gfn 0x200 + i.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PRESETS = ("zap", "lazy-buggy", "lazy")
STEPS = 12  # scenario steps in worked-example.json

L2_SP, L2_INDEX = 0x0, 0x1
L1_SP = 0x200
BASE_PFN = 0x80000

# §1.3's worked constants (EPT, A/D on, write-back RAM, host pfn base 0x80000).
LARGE_RW = "0x80000df7"  # 2M leaf built by a fault, writable, not yet written
LARGE_RW_D = "0x80000ff7"  # the same after the guest wrote it (the CPU sets D)
LARGE_RO_D = "0x80000ff5"  # the same, write-protected for dirty logging
LARGE_RW_FLAGS = "R W X PS A HW MW"
LARGE_RW_D_FLAGS = "R W X PS A D HW MW"
LARGE_RO_D_FLAGS = "R X PS A D HW MW"
SMALL_0X2C0 = 0x800C0D77  # 4K leaf for gfn 0x2c0 (pfn 0x800c0), R W X MT IPAT A HW MW
W_BIT, D_BIT = 1 << 1, 1 << 9  # §1.1: bit 1 is W, bit 9 is the EPT D bit
# §1.3: a non-leaf spte is the child table's address | 0x107 (R W X A); the address is the engine's choice.
POINTER = re.compile(r"^0x[0-9a-f]*107$")
POINTER_FLAGS = "R W X A"

# The gfns the example touches: their bitmap cells must be shown whenever the slot is logged.
TOUCHED = (0x200, 0x250, 0x260, 0x2c0, 0x300)


@dataclass(frozen=True)
class Small:
    """A 4K leaf of §7 in L1: writable or write-protected, written (D) or not."""

    writable: bool = True
    written: bool = True

    def value(self, gfn: int) -> str:
        pfn = BASE_PFN + gfn - L1_SP
        value = SMALL_0X2C0 - (0x800C0 << 12) + (pfn << 12)
        if not self.writable:
            value &= ~W_BIT
        if self.written:
            value |= D_BIT
        return hex(value)

    @property
    def flags(self) -> str:
        return " ".join(
            name
            for name, on in (("R", True), ("W", self.writable), ("X", True), ("A", True),
                             ("D", self.written), ("HW", True), ("MW", True))
            if on
        )  # fmt: skip


RW_D = Small(writable=True, written=True)
RW = Small(writable=True, written=False)
RO_D = Small(writable=False, written=True)


@dataclass(frozen=True)
class Shown:
    """What one player page shows.

    `l2`: L2[1] as (value, flags), "pointer" (a non-leaf to L1) or None (not present).
    `l1`: every present L1 entry, by index. `dirty`: the set bits, or None when the slot is not logged
    (no bitmap, so no cell may be set). `violations`: invariant names the page must report.
    """

    l2: tuple[str, str] | str | None
    l1: dict[int, Small] = field(default_factory=dict)
    dirty: set[int] | None = None
    violations: tuple[str, ...] = ()

    @property
    def large_leaves(self) -> int:
        return 1 if isinstance(self.l2, tuple) else 0


def _zap() -> dict[int, Shown]:
    """Variant (a), 3.14: the large spte is zapped when logging starts; every touch maps one 4K page."""
    return {
        1: Shown((LARGE_RW, LARGE_RW_FLAGS)),  # step 1: 2M leaf by a read fault
        2: Shown((LARGE_RW_D, LARGE_RW_D_FLAGS)),  # step 2: the CPU sets D
        3: Shown(None, dirty=set()),  # step 3: zapped; bitmap all 0
        4: Shown("pointer", {0xC0: RW}, dirty={0x2C0}),  # step 4: read faults, marks dirty
        5: Shown("pointer", {0x50: RW_D, 0xC0: RW}, dirty={0x250, 0x2C0}),  # step 5
        6: Shown("pointer", {0x50: RW_D, 0x60: RW_D, 0xC0: RW}, dirty={0x250, 0x260, 0x2C0}),  # step 6
        # step 6, 0x2c0: L1[0xc0] is already writable, no exit; the CPU sets D.
        7: Shown("pointer", {0x50: RW_D, 0x60: RW_D, 0xC0: RW_D}, dirty={0x250, 0x260, 0x2C0}),
        # step 7: the returned pages are write-protected, the bitmap cleared.
        8: Shown("pointer", {0x50: RO_D, 0x60: RO_D, 0xC0: RO_D}, dirty=set()),
        # step 8: 0x250 by the fast path, then 0x300 by the slow path (L1[0x100]).
        9: Shown("pointer", {0x50: RW_D, 0x60: RO_D, 0xC0: RO_D}, dirty={0x250}),
        10: Shown("pointer", {0x50: RW_D, 0x60: RO_D, 0xC0: RO_D, 0x100: RW_D}, dirty={0x250, 0x300}),
        # step 9: round 2 returns {0x250, 0x300} and write-protects them.
        11: Shown("pointer", {0x50: RO_D, 0x60: RO_D, 0xC0: RO_D, 0x100: RO_D}, dirty=set()),
        # migrate_end: the final round finds nothing; stopping the logging changes no spte in 3.x.
        12: Shown("pointer", {0x50: RO_D, 0x60: RO_D, 0xC0: RO_D, 0x100: RO_D}),
    }


def _lazy() -> dict[int, Shown]:
    """Variant (c), 3.16: read-only large spte; the first write drops it and maps the written page alone."""
    ro_large = (LARGE_RO_D, LARGE_RO_D_FLAGS)
    shown = _zap()
    shown[3] = Shown(ro_large, dirty=set())  # step 3: W cleared, stays a 2M leaf
    shown[4] = Shown(ro_large, dirty=set())  # step 4: no fault, no dirty bit (the patch's benefit)
    shown[5] = Shown("pointer", {0x50: RW_D}, dirty={0x250})  # step 5: drop_large_spte, L1 has 0x50 only
    # step 6: 0x260 and then 0x2c0 fault on non-present entries.
    shown[6] = Shown("pointer", {0x50: RW_D, 0x60: RW_D}, dirty={0x250, 0x260})
    shown[7] = Shown("pointer", {0x50: RW_D, 0x60: RW_D, 0xC0: RW_D}, dirty={0x250, 0x260, 0x2C0})
    # steps 7 to 9 are "as (a)" in the spec's tables.
    return shown


def _lazy_buggy() -> dict[int, Shown]:
    """Variant (b), caf6900f: the fast path makes the 2M spte writable again and logs only gfn 0x200."""
    rw_large = (LARGE_RW_D, LARGE_RW_D_FLAGS)
    shown = _zap()
    shown[3] = Shown((LARGE_RO_D, LARGE_RO_D_FLAGS), dirty=set())
    shown[4] = Shown((LARGE_RO_D, LARGE_RO_D_FLAGS), dirty=set())
    # step 5: the fast path sets W on the 2M spte and marks gfn 0x200 (sp.gfn 0 + index 1 × 512):
    # a writable large spte while logging (§3.13, invariant 2).
    shown[5] = Shown(rw_large, dirty={0x200}, violations=("no_writable_large_while_logging",))
    shown[6] = Shown(rw_large, dirty={0x200})  # step 6: no exit, not logged
    shown[7] = Shown(rw_large, dirty={0x200})
    # step 7: returns {0x200}; rmap(1, 0) is empty, so the 2M spte stays writable. 0x250, 0x260 and 0x2c0
    # were written and not reported (§3.13, invariant 5).
    shown[8] = Shown(rw_large, dirty=set(), violations=("written_not_logged",))
    shown[9] = Shown(rw_large, dirty=set())  # step 8: no exit for either write
    shown[10] = Shown(rw_large, dirty=set())
    shown[11] = Shown(rw_large, dirty=set())  # step 9: round 2 returns {}
    shown[12] = Shown(rw_large)
    return shown


EXPECTED: dict[str, dict[int, Shown]] = {"zap": _zap(), "lazy-buggy": _lazy_buggy(), "lazy": _lazy()}

# §7.2 step 9, last paragraph: (b)'s destination is stale for every page written from step 5 on, except
# gfn 0x200, whose bit was set; (a) and (c) lose nothing.
LOST_AT_END: dict[str, set[int]] = {
    "zap": set(),
    "lazy-buggy": {0x250, 0x260, 0x2C0, 0x300},
    "lazy": set(),
}
