"""What the live kernel's randomised tests share: the probe that shows how the kernel ran a guest before a
test trusts it as an oracle, and the native scenarios drawn over one slot on 2M host pages."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from engine.scenario import parse_scenario
from live.backend import Guest, run_with_stats
from live.execution import Execution, judge

BASE = 0x200  # the slot: gfns 0x200-0x5ff, two 2M regions on 2M host pages
PAGES = 1024
REGION = 512


def probe(guest: Guest, expected: Execution) -> str | None:
    """None when 16 first-touch writes on `guest` ran as `expected` (the run's statistics decide), else
    why not: a test that checks one way of running must first see the kernel run that way."""
    scenario = parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "memslots": [{"id": 1, "base_gfn": "0x200", "npages": 16}],
            "steps": [{"op": "write", "gfn": "0x200", "count": 16}],
        }
    )
    run = run_with_stats(scenario, guest=guest)
    verdict = judge(run.totals, run.guest_accesses, run.pages_touched, run.stats_missing)
    return None if verdict.execution == expected else verdict.reason


@st.composite
def native_scenarios(draw: st.DrawFn, *, huge_first: bool = False) -> dict[str, Any]:
    """One or two vCPUs over the slot: reads and writes with counts and strides, logging switched on and
    off, GET_DIRTY_LOG while logged, a last GET if logging is still on. `huge_first`: half the time, a
    write into each 2M region and then logging, before the rest (where the shadow MMU's facts bite)."""
    vcpus = draw(st.integers(1, 2))
    steps: list[dict[str, Any]] = []
    logged = False
    if huge_first and draw(st.booleans()):
        for region in range(PAGES // REGION):
            gfn = BASE + region * REGION + draw(st.integers(0, REGION - 1))
            steps.append({"op": "write", "gfn": hex(gfn), "count": 1, "stride": 1})
        steps.append({"op": "enable_dirty_log", "slot": 1})
        logged = True
    for _ in range(draw(st.integers(3, 14))):
        kind = draw(st.sampled_from(["write", "read", "write", "read", "log", "get"]))
        if kind in ("write", "read"):
            count = draw(st.integers(1, 4))
            stride = draw(st.sampled_from([1, 7, 64, 200]))
            first = draw(st.integers(0, PAGES - 1 - (count - 1) * stride))
            step: dict[str, Any] = {"op": kind, "gfn": hex(BASE + first), "count": count, "stride": stride}
            step["vcpu"] = draw(st.integers(0, vcpus - 1))
            steps.append(step)
        elif kind == "log":
            steps.append({"op": "disable_dirty_log" if logged else "enable_dirty_log", "slot": 1})
            logged = not logged
        elif logged:
            steps.append({"op": "get_dirty_log", "slot": 1})
    if logged:
        steps.append({"op": "get_dirty_log", "slot": 1})
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "vm": {"vcpus": vcpus},
        "memslots": [{"id": 1, "base_gfn": hex(BASE), "npages": PAGES, "host_page": "2M"}],
        "steps": steps,
    }


# Shadow paging: the same slot, its guest tables from its first gfn: each space's PML4, PDPT and page
# directory (space 0: 0x200, 0x201, 0x202), then the page table of a region mapped by 4K pages.
SHADOW_PD = 0x202
LINKED_GVA = 0x600000  # page-directory entry 3: unused by the identity map of gfns 0x200-0x5ff
LINKED_TABLE = 0x480  # the page table S1 links there, inside the second 2M region
LINKED_TARGET = 0x500  # what its entry 0 maps
# The guest's table pages the strategy below lays out from BASE: each space's PML4, PDPT and page
# directory, and a page table for a region mapped by 4K pages (at most 8 for two spaces: one group of
# eight that a fault there prefetches). The strategy makes no read or write there and stores into the
# page directory once, keeping clear of two disagreements of the model with the kernel that
# test_live_shadow_agreement.py shows by themselves: a store into an upper-level table zaps a link
# above kept leaves, and the next fault there finds its leaf in place (the kernel's fault is spurious,
# without prefetch; the model's prefetches); and a store into an upper-level table whose leaf is present
# is emulated at once by the kernel (write tracking), while the model's fault prefetches first.
TABLE_PAGES = 8
PDE = 0x87  # P, R/W, U/S, PS
ACCESSED, DIRTY = 0x20, 0x40


@st.composite
def shadow_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """A shadow-paging guest over the slot, identity-mapped: the second 2M region by a 2M page whose
    PDE is dirty or clean, or by 4K pages; one or two address spaces. Steps: reads and writes by gfn
    and by gva, logging on and off, GET_DIRTY_LOG, the guest's stores into its page directory (the
    second region's PDE with D set or cleared), linking a page table inside the second region at
    gva 0x600000 and accessing through it, INVLPG and MOV CR3."""
    second = draw(st.sampled_from(["dirty", "clean", "4K"]))
    maps: list[dict[str, Any]] = [{"gfn": hex(BASE), "npages": REGION, "page": "2M"}]
    if second == "4K":
        maps.append({"gfn": hex(BASE + REGION), "npages": REGION})
    else:
        maps.append({"gfn": hex(BASE + REGION), "npages": REGION, "page": "2M", "dirty": second == "dirty"})
    spaces = draw(st.integers(1, 2))
    vcpus = draw(st.integers(1, 2))
    steps: list[dict[str, Any]] = []
    logged = linked = directory_written = False
    entered = [False] * vcpus
    space = [0] * vcpus
    for _ in range(draw(st.integers(3, 12))):
        kind = draw(
            st.sampled_from(
                ["write", "read", "write", "read", "log", "get", "pde", "link", "linked", "cr3", "invlpg"]
            )
        )
        vcpu = draw(st.integers(0, vcpus - 1))
        if kind in ("write", "read"):
            count = draw(st.integers(1, 3))
            stride = draw(st.sampled_from([1, 7, 64, 200]))
            first = BASE + draw(st.integers(0, PAGES - 1 - TABLE_PAGES - (count - 1) * stride))
            if any(first + k * stride < BASE + TABLE_PAGES for k in range(count)):
                first += TABLE_PAGES  # (no access into the guest's tables' group: see TABLE_PAGES)
            step: dict[str, Any] = {"op": kind, "count": count, "stride": stride, "vcpu": vcpu}
            entered[vcpu] = True
            if draw(st.booleans()):
                step["gva"] = hex(first << 12)
            else:
                step["gfn"] = hex(first)
            steps.append(step)
        elif kind == "log":
            steps.append({"op": "disable_dirty_log" if logged else "enable_dirty_log", "slot": 1})
            logged = not logged
        elif kind == "get" and logged:
            steps.append({"op": "get_dirty_log", "slot": 1})
        elif kind == "pde" and second != "4K":
            directory_written = True
            dirty = DIRTY if draw(st.booleans()) else 0
            pte = ((BASE + REGION) << 12) | PDE | ACCESSED | dirty
            steps.append(
                {"op": "write_gpte", "table": hex(SHADOW_PD), "index": 2, "pte": hex(pte), "vcpu": vcpu}
            )
        elif kind == "link" and not directory_written:
            directory_written = True
            steps.append({"op": "write_gpte", "table": hex(SHADOW_PD), "index": 3,
                          "pte": hex(LINKED_TABLE << 12 | 0x27)})
            steps.append({"op": "write_gpte", "table": hex(LINKED_TABLE), "index": 0,
                          "pte": hex(LINKED_TARGET << 12 | 0x67)})
            linked = True
        elif kind == "linked" and linked and space[vcpu] == 0:
            op = draw(st.sampled_from(["read", "write"]))
            steps.append({"op": op, "gva": hex(LINKED_GVA), "vcpu": vcpu})
        elif kind == "cr3" and spaces > 1:
            space[vcpu] = draw(st.integers(0, spaces - 1))
            steps.append({"op": "set_cr3", "space": space[vcpu], "vcpu": vcpu})  # only space 0 has the link
        elif kind == "invlpg":
            gva = (BASE + draw(st.integers(0, PAGES - 1))) << 12
            steps.append({"op": "invlpg", "gva": hex(gva), "vcpu": vcpu})
    if logged:
        steps.append({"op": "get_dirty_log", "slot": 1})
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "vm": {"mmu": "shadow", "vcpus": vcpus},
        "memslots": [{"id": 1, "base_gfn": hex(BASE), "npages": PAGES, "host_page": "2M"}],
        "guest": {"tables_at": hex(BASE), "spaces": [{"maps": maps}] * spaces},
        "steps": steps,
    }
