"""The shadow-paging live guest without a kernel: its page tables as the live VM lays them out, and the
machine code of its operations, byte for byte as the Intel SDM encodes them.

The layout must leave every scenario table page as `build_guest` built it but for one PML4 entry, at an
index no space uses, whose path reaches the code page through tables in the system slot only, with A
and D already set on every entry of that path (so the kernel's walk of the code never writes a table).
"""

from __future__ import annotations

import struct

from engine.scenario import parse_scenario
from live.guest_code import gpte_store_program, invlpg_program, set_cr3_program, shadow_access_program
from live.shadow_guest import SYSTEM_PAGES, free_pml4_index, layout

SCENARIO = parse_scenario(
    {
        "format": "sptelab-scenario",
        "version": 1,
        "vm": {"mmu": "shadow"},
        "memslots": [{"id": 1, "base_gfn": "0x200", "npages": "0x400", "host_page": "2M"}],
        "guest": {"tables_at": "0x200", "spaces": [{}, {}]},
        "steps": [],
    }
)
SYSTEM_BASE = 0xF0000
OUT_E9 = bytes([0xE6, 0xE9])
PRESENT, ACCESSED, DIRTY = 0x1, 0x20, 0x40


def _entries(page: bytes) -> list[int]:
    return list(struct.unpack("<512Q", page))


def test_only_one_pml4_entry_is_added_at_an_index_no_space_uses() -> None:
    built = SCENARIO.built_guest()
    assert built is not None
    placed = layout(built, SYSTEM_BASE)
    index = free_pml4_index(built)
    assert index == 255  # the identity maps below 4 GiB use PML4 entry 0 only
    assert placed.system_index == index
    assert placed.cr3s == tuple(cr3 << 12 for cr3 in built.cr3s) == (0x200000, 0x203000)
    for gfn, entries in built.tables.tables.items():
        laid = _entries(placed.scenario_pages[gfn])
        changed = [i for i in range(512) if laid[i] != entries[i]]
        assert changed == ([index] if gfn in built.cr3s else []), hex(gfn)


def test_the_code_page_is_reached_through_the_system_slot_with_a_and_d_set() -> None:
    built = SCENARIO.built_guest()
    assert built is not None
    placed = layout(built, SYSTEM_BASE)
    assert len(placed.system_pages) == SYSTEM_PAGES
    system = range(SYSTEM_BASE, SYSTEM_BASE + SYSTEM_PAGES)
    for cr3 in placed.cr3s:
        entry = _entries(placed.scenario_pages[cr3 >> 12])[placed.system_index]
        va = placed.code_va
        for level in (3, 2, 1):
            assert entry & PRESENT and entry & ACCESSED and entry & DIRTY
            table = (entry >> 12) & ((1 << 40) - 1)
            assert table in system  # never a scenario page
            entry = _entries(placed.system_pages[table - SYSTEM_BASE])[(va >> (12 + 9 * (level - 1))) & 511]
        assert entry & PRESENT and entry & ACCESSED and entry & DIRTY
        assert (entry >> 12) & ((1 << 40) - 1) == SYSTEM_BASE  # the code page: the system slot's first


def test_the_programs_are_the_sdm_s_encodings() -> None:
    address = 0x7F_1234_5000
    imm64 = struct.pack("<Q", address)
    # mov rsi, imm64 (REX.W B8+6); mov eax, [rsi] (8B 06); mov dword [rsi], imm32 (C7 /0); out 0xe9, al
    assert shadow_access_program([(address, None)]) == b"\x48\xbe" + imm64 + b"\x8b\x06" + OUT_E9
    assert shadow_access_program([(address, 0x1234)]) == (
        b"\x48\xbe" + imm64 + b"\xc7\x06" + struct.pack("<I", 0x1234) + OUT_E9
    )
    # mov rax, imm64 (REX.W B8); mov qword [rsi], rax (REX.W 89 /r)
    pte = 0x8000_0000_0048_0027
    assert gpte_store_program(address, pte) == (
        b"\x48\xbe" + imm64 + b"\x48\xb8" + struct.pack("<Q", pte) + b"\x48\x89\x06" + OUT_E9
    )
    # invlpg [rsi] (0F 01 /7); mov cr3, rax (0F 22 /r, reg 3)
    assert invlpg_program(address) == b"\x48\xbe" + imm64 + b"\x0f\x01\x3e" + OUT_E9
    assert set_cr3_program(0x203000) == b"\x48\xb8" + struct.pack("<Q", 0x203000) + b"\x0f\x22\xd8" + OUT_E9
    assert shadow_access_program([]) == OUT_E9
