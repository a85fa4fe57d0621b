"""The walker every pass goes down the tables with (engine/tdp_iter.py), checked against a plain recursive
walk of the same state, and the typed switches and outcomes it came with."""

from __future__ import annotations

import json
from typing import get_args

import pytest

from engine.kvm import Kvm
from engine.mmu import RetPf
from engine.policy import SWITCH_VALUES, Era, Policy, make_policy
from engine.scenario import parse_scenario
from engine.shadow_page import KvmMmuPage
from engine.simulation import Simulation
from engine.spte import (
    PT64_ENT_PER_PAGE,
    PT_DIRECTORY_LEVEL,
    is_last_spte,
    is_shadow_present_pte,
    pages_per_hpage,
)
from engine.tdp_iter import (
    TdpIter,
    find_shadow_page,
    for_each_shadow_entry,
    for_each_tdp_pte,
    spte_to_child_sp,
    walk_spte,
)
from engine.tdp_mmu import SPLIT_EAGERLY, tdp_mmu_split_huge_page
from scenarios import load_builtin_text


def run(name: str, variant: str) -> Simulation:
    sim = Simulation(parse_scenario(json.loads(load_builtin_text(name))), make_policy(variant))
    while not sim.done:
        sim.step()
    return sim


def reference(
    kvm: Kvm, sp: KvmMmuPage, start: int, end: int, min_level: int
) -> list[tuple[int, int, int, int]]:
    """(level, gfn, index, spte) of every present entry overlapping [start, end), parents first."""
    out: list[tuple[int, int, int, int]] = []
    span = pages_per_hpage(sp.level)
    for index, spte in enumerate(sp.spt):
        gfn = sp.gfn + index * span
        if gfn + span <= start or gfn >= end or not is_shadow_present_pte(spte):
            continue
        out.append((sp.level, gfn, index, spte))
        if sp.level > min_level and not is_last_spte(spte, sp.level):
            out.extend(reference(kvm, spte_to_child_sp(kvm, spte), start, end, min_level))
    return out


@pytest.mark.parametrize("variant", ["lazy", "modern"])
@pytest.mark.parametrize("min_level", [1, 2])
def test_for_each_tdp_pte_is_the_pre_order_walk_of_the_range(variant: str, min_level: int) -> None:
    kvm = run("write-storm-2m", variant).kvm
    for start, end in [(0, 1 << 36), (0x201, 0x3ff), (0x1ff, 0x400), (0x3ff, 0x400)]:
        walked = [
            (it.level, it.gfn, it.index, it.old_spte)
            for it in for_each_tdp_pte(kvm, kvm.root, start, end, min_level)
        ]
        assert walked == reference(kvm, kvm.root, start, end, min_level)
        assert walked, (start, end)


def test_the_shadow_walk_goes_root_to_leaf_along_one_address() -> None:
    kvm = run("write-storm-2m", "lazy").kvm
    for gfn in (0x200, 0x2ff, 0x3ff, 0x400000):
        path = [(level, index) for level, _, index, _ in for_each_shadow_entry(kvm, gfn)]
        assert [level for level, _ in path] == list(range(4, 4 - len(path), -1))
        assert [index for _, index in path] == [(gfn >> (9 * (level - 1))) & 511 for level, _ in path]
        found = walk_spte(kvm, gfn)
        if found is None:
            assert len(path) < 4 or not is_shadow_present_pte(kvm.root.spt[0])
        else:
            sp, index, spte = found
            assert sp.spt[index] == spte and is_last_spte(spte, sp.level)


def test_a_huge_leaf_split_under_the_walk_is_walked_into() -> None:
    """As try_step_down reads the entry again: the body turns a leaf into a table, the walk goes down."""
    kvm = run("read-mostly-logging", "lazy").kvm  # ends with one 2M leaf
    huge = [(it.sp, it.index) for it in for_each_tdp_pte(kvm, kvm.root, 0, 1 << 36, PT_DIRECTORY_LEVEL)]
    huge = [(sp, i) for sp, i in huge if sp.level == PT_DIRECTORY_LEVEL and is_last_spte(sp.spt[i], 2)]
    assert len(huge) == 1
    sp, index = huge[0]
    gfn = sp.gfn + index * pages_per_hpage(sp.level)
    levels = []
    for it in for_each_tdp_pte(kvm, kvm.root, gfn, gfn + 512):
        levels.append(it.level)
        if it.sp is sp and it.index == index:
            tdp_mmu_split_huge_page(kvm, sp, index, SPLIT_EAGERLY)
    assert levels.count(1) == PT64_ENT_PER_PAGE


def test_the_iterator_steps_sideways_and_back_up() -> None:
    kvm = run("write-storm-2m", "lazy").kvm
    it = TdpIter(kvm, kvm.root, 0x200)
    assert (it.level, it.index) == (4, 0)
    assert it.try_step_down() and it.level == 3
    assert it.try_step_down() and (it.level, it.index, it.gfn) == (2, 1, 0x200)
    assert it.try_step_side() and (it.index, it.gfn) == (2, 0x400)
    assert it.try_step_up() and (it.level, it.index, it.gfn) == (3, 0, 0)
    assert it.try_step_up() and it.level == 4
    assert not it.try_step_up()


def test_find_shadow_page_skips_zapped_tables() -> None:
    kvm = run("write-storm-2m", "lazy").kvm
    table = find_shadow_page(kvm, 0x200, 1)
    assert table is not None and table.level == 1 and table.gfn == 0x200
    table.invalid = True
    assert find_shadow_page(kvm, 0x200, 1) is None


def test_every_switch_value_is_its_literal_type() -> None:
    for name, field_type in Policy.__annotations__.items():
        allowed = SWITCH_VALUES[name]
        if isinstance(allowed[0], bool):
            assert field_type == "bool", name
        else:
            assert field_type != "str", f"{name} is typed str: a misspelt comparison would pass"
    assert SWITCH_VALUES["era"] == get_args(Era)


def test_outcomes_keep_the_words_the_result_json_carries() -> None:
    # "emulate" only under shadow paging: a store to a write-protected guest page table.
    assert [r.value for r in RetPf] == ["fixed", "spurious", "retry", "emulate"]
    assert json.dumps({"ret": RetPf.RET_PF_FIXED}) == '{"ret": "fixed"}'
    assert f"{RetPf.RET_PF_RETRY}" == "retry"
