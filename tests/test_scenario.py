"""The scenario format of contract §1: what is accepted, what is refused, and the words of each refusal."""

import base64
import contextlib
import copy
import json
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from conftest import spec_example
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.codec import decode_code, encode_scenario
from engine.scenario import (
    MAX_ACCESSES,
    MAX_COUNT,
    MAX_MEMSLOTS,
    MAX_SCENARIO_BYTES,
    MAX_STEPS,
    MAX_TOTAL_PAGES,
    MAX_VCPUS,
    PAGE_LEVELS,
    STEP_OPS,
    ClearDirtyLogStep,
    DisableDirtyLogStep,
    EnableDirtyLogStep,
    FlushTlbStep,
    GetDirtyLogEndStep,
    GetDirtyLogStep,
    InvlpgStep,
    MigrateBeginStep,
    MigrateEndStep,
    MigrateRoundStep,
    NoteStep,
    ReadStep,
    ResetDirtyRingStep,
    Scenario,
    ScenarioError,
    SetCr3Step,
    WriteGpteStep,
    WriteStep,
    ZapAllStep,
    parse_scenario,
    scenario_json_schema,
    step_to_json,
)
from scenarios import builtin_scenarios

# The spec's worked example up to its first GET_DIRTY_LOG round.
EXAMPLE: dict[str, Any] = spec_example(rounds=1)


def minimal(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A scenario with one 4K-backed slot over gfns 0x200-0x3ff and the given steps."""
    scenario: dict[str, Any] = {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": [{"id": 1, "base_gfn": "0x200", "npages": 512}],
        "steps": list(steps),
    }
    scenario.update(fields)
    return scenario


def refused(data: Any) -> str:
    """The message parse_scenario refuses `data` with; every refusal is exactly one line."""
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert message
    return message


def edited(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    scenario = copy.deepcopy(EXAMPLE)
    change(scenario)
    return scenario


# ---------------------------------------------------------------------------------------------------------
# What is accepted


def test_worked_example_parses_with_hex_and_int_numbers() -> None:
    scenario = parse_scenario(json.dumps(EXAMPLE))
    slot = scenario.memslots[0]
    assert (slot.id, slot.base_gfn, slot.npages, slot.base_pfn) == (1, 0x200, 512, 0x80000)
    assert slot.host_level == PAGE_LEVELS["2M"] == 2
    assert slot.end_gfn == 0x400
    assert scenario.vm.max_level == 2
    first = scenario.steps[0]
    assert isinstance(first, ReadStep)
    assert (first.gfn, first.count, first.stride, first.vcpu, first.is_write) == (0x210, 1, 1, 0, False)
    fifth = scenario.steps[4]
    assert isinstance(fifth, WriteStep)
    assert fifth.is_write
    assert fifth.gfn == 592
    last = scenario.steps[7]
    assert isinstance(last, GetDirtyLogStep)
    assert last.slot == 1


def test_text_bytes_and_mapping_give_the_same_scenario() -> None:
    text = json.dumps(EXAMPLE)
    assert parse_scenario(text) == parse_scenario(text.encode()) == parse_scenario(EXAMPLE)


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    assert parse_scenario(b"\xef\xbb\xbf" + json.dumps(EXAMPLE).encode()) == parse_scenario(EXAMPLE)


@pytest.mark.parametrize(
    ("spelling", "value"),
    [
        (0, 0),
        (512, 512),
        ("0x0", 0),
        ("0x200", 0x200),
        ("0xABCdef", 0xABCDEF),
        ("0x0000000000000000200", 0x200),
    ],
)
def test_numbers_are_json_integers_or_0x_hex_strings(spelling: object, value: int) -> None:
    scenario = parse_scenario(minimal(memslots=[{"id": 1, "base_gfn": spelling, "npages": 1}]))
    assert scenario.memslots[0].base_gfn == value


def test_defaults_are_filled_in() -> None:
    scenario = parse_scenario(minimal({"op": "write", "gfn": 0x200}, {"op": "note", "text": "hi"}))
    assert scenario.title == scenario.description == ""
    assert (scenario.vm.vcpus, scenario.vm.max_page_level, scenario.vm.ept_ad) == (1, "2M", True)
    slot = scenario.memslots[0]
    assert (slot.host_page, slot.host_writable, slot.host_level, slot.host_cow) == ("4K", True, 1, "copy")
    write = scenario.steps[0]
    assert isinstance(write, WriteStep)
    assert (write.count, write.stride, write.vcpu) == (1, 1, 0)
    no_steps = minimal()
    del no_steps["steps"]
    assert parse_scenario(no_steps).steps == []


def test_base_pfn_defaults_by_position_in_the_list() -> None:
    slots = [
        {"id": 7, "base_gfn": 0, "npages": 16},
        {"id": 3, "base_gfn": 0x100, "npages": 16, "base_pfn": "0x1234"},
        {"id": 5, "base_gfn": 0x200, "npages": 16},
    ]
    scenario = parse_scenario(minimal(memslots=slots))
    assert [slot.base_pfn for slot in scenario.memslots] == [0x80000, 0x1234, 0x80000 + 2 * 0x100000]


def test_every_op_parses_to_its_class() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "read", "gfn": 0x200},
        {"op": "write", "gfn": 0x200},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "get_dirty_log", "slot": 1},
        {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 64},
        {"op": "disable_dirty_log", "slot": 1},
        {"op": "reset_dirty_ring"},
        {"op": "flush_tlb"},
        {"op": "zap_all"},
        {"op": "note", "text": "narration"},
        {"op": "migrate_begin"},
        {"op": "migrate_round"},
        {"op": "migrate_end"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "get_dirty_log", "slot": 1, "split": True},
        {"op": "get_dirty_log_end", "slot": 1},
        {"op": "write_gpte", "table": "0x300", "index": 0, "pte": "0x301067"},
        {"op": "invlpg", "gva": "0x300000"},
        {"op": "set_cr3", "space": 0},
        {"op": "read", "gva": "0x300000"},
    ]
    # The guest's own paging operations exist only under shadow paging.
    shadow = minimal(*steps, vm={"mmu": "shadow"}, guest={"tables_at": "0x200"})
    scenario = parse_scenario(shadow)
    assert [type(step) for step in scenario.steps] == [
        ReadStep,
        WriteStep,
        EnableDirtyLogStep,
        GetDirtyLogStep,
        ClearDirtyLogStep,
        DisableDirtyLogStep,
        ResetDirtyRingStep,
        FlushTlbStep,
        ZapAllStep,
        NoteStep,
        MigrateBeginStep,
        MigrateRoundStep,
        MigrateEndStep,
        EnableDirtyLogStep,
        GetDirtyLogStep,
        GetDirtyLogEndStep,
        WriteGpteStep,
        InvlpgStep,
        SetCr3Step,
        ReadStep,
    ]
    assert set(STEP_OPS) == {step["op"] for step in steps}


def test_control_characters_in_text_are_just_text() -> None:
    raw = json.dumps(minimal({"op": "note", "text": "a\u0000b\u001f<script>"}, title="\u0007"))
    scenario = parse_scenario(raw)
    note = scenario.steps[0]
    assert isinstance(note, NoteStep)
    assert note.text == "a\u0000b\u001f<script>"
    assert scenario.title == "\u0007"


def test_models_are_frozen() -> None:
    scenario = parse_scenario(EXAMPLE)
    with pytest.raises(ValueError, match="frozen"):
        scenario.vm.vcpus = 2


# ---------------------------------------------------------------------------------------------------------
# Canonical form and step_to_json


def test_canonical_fills_defaults_and_uses_ints_in_a_stable_order() -> None:
    canonical = parse_scenario(minimal({"op": "write", "gfn": "0x250"})).canonical()
    assert list(canonical) == ["format", "version", "title", "description", "vm", "memslots", "steps"]
    assert canonical == {
        "format": "sptelab-scenario",
        "version": 1,
        "title": "",
        "description": "",
        "vm": {"vcpus": 1, "max_page_level": "2M", "ept_ad": True},
        "memslots": [
            {
                "id": 1,
                "base_gfn": 512,
                "npages": 512,
                "host_page": "4K",
                "base_pfn": 0x80000,
                "host_writable": True,
                # What a write does to a host page not yet writable: copy a shared page (§5.8), the default.
                "host_cow": "copy",
            }
        ],
        "steps": [{"op": "write", "gfn": 592, "count": 1, "stride": 1, "vcpu": 0}],
    }


def test_canonical_round_trips() -> None:
    scenario = parse_scenario(EXAMPLE)
    canonical = scenario.canonical()
    assert parse_scenario(canonical) == scenario
    assert parse_scenario(json.dumps(canonical)).canonical() == canonical


def test_step_to_json_puts_op_first_with_every_field() -> None:
    assert step_to_json(WriteStep(gfn=592)) == {"op": "write", "gfn": 592, "count": 1, "stride": 1, "vcpu": 0}
    assert list(step_to_json(WriteStep(gfn=592))) == ["op", "gfn", "count", "stride", "vcpu"]
    assert step_to_json(GetDirtyLogStep(slot=1)) == {"op": "get_dirty_log", "slot": 1}
    assert step_to_json(NoteStep(text="x")) == {"op": "note", "text": "x"}
    assert step_to_json(MigrateBeginStep()) == {"op": "migrate_begin"}


# ---------------------------------------------------------------------------------------------------------
# Refusals, each naming where


BAD_INPUTS: list[tuple[str, Callable[[dict[str, Any]], object], list[str]]] = [
    (
        "unknown op",
        lambda s: s["steps"].append({"op": "fly"}),
        ["step 8: unknown op 'fly' (known: read, write, enable_dirty_log", "migrate_end)"],
    ),
    ("op not a string", lambda s: s["steps"].append({"op": 3}), ["step 8: op must be a string"]),
    ("missing op", lambda s: s["steps"].insert(1, {"gfn": 1}), ["step 1: missing field 'op'"]),
    ("step not an object", lambda s: s["steps"].insert(0, "read"), ["step 0: must be an object"]),
    (
        "gfn outside every slot",
        lambda s: s["steps"].insert(4, {"op": "write", "gfn": "0x400"}),
        ["step 4 (write): gfn 0x400 is outside every memslot"],
    ),
    (
        "gfn below every slot",
        lambda s: s["steps"].append({"op": "read", "gfn": 0}),
        ["step 8 (read): gfn 0x0 is outside every memslot"],
    ),
    (
        "run leaves the slot",
        lambda s: s["steps"].append({"op": "write", "gfn": "0x3fe", "count": 5}),
        ["step 8 (write): gfn 0x400 (access 3 of 5) is outside every memslot"],
    ),
    (
        "stride leaves the slot",
        lambda s: s["steps"].append({"op": "read", "gfn": "0x200", "count": 3, "stride": "0x100"}),
        ["step 8 (read): gfn 0x400 (access 3 of 3)"],
    ),
    (
        "unknown field in a step",
        lambda s: s["steps"][1].update(size=2),
        ["step 1 (write): unknown field 'size'"],
    ),
    ("unknown field in vm", lambda s: s["vm"].update(cpus=2), ["vm: unknown field 'cpus'"]),
    ("unknown top-level field", lambda s: s.update(steps_=[]), ["scenario: unknown field 'steps_'"]),
    ("missing gfn", lambda s: s["steps"][0].pop("gfn"), ["step 0 (read): missing field 'gfn'"]),
    ("missing text", lambda s: s["steps"].append({"op": "note"}), ["step 8 (note): missing field 'text'"]),
    (
        "missing slot",
        lambda s: s["steps"][2].pop("slot"),
        ["step 2 (enable_dirty_log): missing field 'slot'"],
    ),
    (
        "decimal string",
        lambda s: s["steps"][1].update(gfn="672"),
        ["step 1 (write): gfn must be an integer or a hex string", "'672'"],
    ),
    ("float", lambda s: s["steps"][1].update(gfn=672.0), ["step 1 (write): gfn must be an integer", "672.0"]),
    (
        "boolean",
        lambda s: s["steps"][1].update(count=True),
        ["step 1 (write): count must be an integer", "boolean"],
    ),
    ("null", lambda s: s["steps"][1].update(vcpu=None), ["step 1 (write): vcpu must be an integer", "null"]),
    (
        "negative",
        lambda s: s["memslots"][0].update(base_gfn=-1),
        ["memslots[0].base_gfn: must not be negative"],
    ),
    ("huge int", lambda s: s["steps"][1].update(gfn=10**30), ["step 1 (write): gfn must fit in 64 bits"]),
    (
        "huge hex",
        lambda s: s["steps"][1].update(gfn="0x" + "f" * 40),
        ["step 1 (write): gfn must fit in 64 bits"],
    ),
    (
        "hex with junk",
        lambda s: s["steps"][1].update(gfn="0x2_00"),
        ["step 1 (write): gfn must be an integer"],
    ),
    (
        "hex with spaces",
        lambda s: s["steps"][1].update(gfn=" 0x200"),
        ["step 1 (write): gfn must be an integer"],
    ),
    (
        "upper-case prefix",
        lambda s: s["steps"][1].update(gfn="0X200"),
        ["step 1 (write): gfn must be an integer"],
    ),
    (
        "count 0",
        lambda s: s["steps"][1].update(count=0),
        ["step 1 (write): count must be between 1 and 1048576"],
    ),
    (
        "count too big",
        lambda s: s["steps"][1].update(count=MAX_COUNT + 1),
        ["step 1 (write): count must be between 1 and 1048576"],
    ),
    (
        "stride too big",
        lambda s: s["steps"][1].update(stride=MAX_COUNT + 1),
        ["step 1 (write): stride must be between 0 and 1048576"],
    ),
    (
        "vcpu past vm.vcpus",
        lambda s: s["steps"][3].update(vcpu=1),
        ["step 3 (read): vcpu 1 does not exist (vm.vcpus is 1)"],
    ),
    (
        "vcpu past the limit",
        lambda s: s["steps"][3].update(vcpu=8),
        ["step 3 (read): vcpu must be between 0 and 7"],
    ),
    (
        "unknown slot",
        lambda s: s["steps"][2].update(slot=2),
        ["step 2 (enable_dirty_log): slot 2 is not a memslot of this scenario"],
    ),
    (
        "slot id too big",
        lambda s: s["steps"][2].update(slot=32768),
        ["step 2 (enable_dirty_log): slot must be between 0 and 32767"],
    ),
    (
        "get_dirty_log before enable",
        lambda s: s["steps"].insert(2, {"op": "get_dirty_log", "slot": 1}),
        ["step 2 (get_dirty_log): slot 1 is not dirty-logged at this point"],
    ),
    (
        "get_dirty_log after disable",
        lambda s: s["steps"].insert(7, {"op": "disable_dirty_log", "slot": 1}),
        ["step 8 (get_dirty_log): slot 1 is not dirty-logged at this point"],
    ),
    (
        "text not a string",
        lambda s: s["steps"].append({"op": "note", "text": 5}),
        ["step 8 (note): text must be a string, not the number 5"],
    ),
    ("lone surrogate", lambda s: s.update(title="a\ud800"), ["title: holds '\\ud800' at position 1"]),
    ("vcpus 0", lambda s: s["vm"].update(vcpus=0), ["vm.vcpus: must be between 1 and 8"]),
    ("vcpus 9", lambda s: s["vm"].update(vcpus=MAX_VCPUS + 1), ["vm.vcpus: must be between 1 and 8"]),
    (
        "page level",
        lambda s: s["vm"].update(max_page_level="4M"),
        ["vm.max_page_level: must be '4K', '2M' or '1G'"],
    ),
    ("ept_ad not a boolean", lambda s: s["vm"].update(ept_ad="true"), ["vm.ept_ad: must be true or false"]),
    ("ept_ad 1", lambda s: s["vm"].update(ept_ad=1), ["vm.ept_ad: must be true or false"]),
    ("vm not an object", lambda s: s.update(vm=[]), ["vm: must be an object, not a list"]),
    ("host_page", lambda s: s["memslots"][0].update(host_page="2m"), ["memslots[0].host_page: must be"]),
    (
        "host_writable",
        lambda s: s["memslots"][0].update(host_writable=0),
        ["memslots[0].host_writable: must be true or false"],
    ),
    (
        "host_cow",
        lambda s: s["memslots"][0].update(host_writable=False, host_cow="share"),
        ["memslots[0].host_cow: must be 'copy' or 'reuse'"],
    ),
    (
        "host_cow reuse on a writable host page",
        lambda s: s["memslots"][0].update(host_cow="reuse"),
        ["memslots[0]: host_cow says what a write does to a host page that is not writable yet"],
    ),
    ("npages 0", lambda s: s["memslots"][0].update(npages=0), ["memslots[0].npages: must be between 1 and"]),
    ("slot id", lambda s: s["memslots"][0].update(id=40000), ["memslots[0].id: must be between 0 and 32767"]),
    ("missing npages", lambda s: s["memslots"][0].pop("npages"), ["memslots[0]: missing field 'npages'"]),
    (
        "overlapping slots",
        lambda s: s["memslots"].append({"id": 2, "base_gfn": "0x3ff", "npages": 2}),
        ["memslots[1]: overlaps memslot 1 (gfns 0x200-0x3ff)"],
    ),
    (
        "slot inside another",
        lambda s: s["memslots"].insert(0, {"id": 2, "base_gfn": "0x300", "npages": 1}),
        ["memslots[1]: overlaps memslot 2 (gfns 0x300-0x300)"],
    ),
    (
        "duplicate slot id",
        lambda s: s["memslots"].append({"id": 1, "base_gfn": "0x1000", "npages": 1}),
        ["memslots[1].id: slot 1 is already memslots[0]"],
    ),
    (
        "beyond 4-level EPT",
        lambda s: s["memslots"].append({"id": 2, "base_gfn": "0xfffffffff", "npages": 2}),
        ["memslots[1]: gfns 0xfffffffff-0x1000000000 go past 0xfffffffff", "4-level EPT"],
    ),
    (
        "beyond the pfn field",
        lambda s: s["memslots"].append(
            {"id": 2, "base_gfn": "0x1000", "npages": 2, "base_pfn": "0xffffffffff"}
        ),
        ["memslots[1]: pfns 0xffffffffff-0x10000000000 go past 0xffffffffff"],
    ),
    (
        "no memslots",
        lambda s: s.update(memslots=[]),
        ["memslots: must hold between 1 and 64 memslots, not 0"],
    ),
    ("memslots not a list", lambda s: s.update(memslots={}), ["memslots: must be a list, not an object"]),
    ("steps not a list", lambda s: s.update(steps="read"), ["steps: must be a list"]),
    ("wrong format", lambda s: s.update(format="sptelab-result"), ["format: must be 'sptelab-scenario'"]),
    ("missing format", lambda s: s.pop("format"), ["scenario: missing field 'format'"]),
    ("version 2", lambda s: s.update(version=2), ["version: must be 1"]),
    ("version true", lambda s: s.update(version=True), ["version: must be 1"]),
    ("version as hex", lambda s: s.update(version="0x1"), ["version: must be 1"]),
    ("title not a string", lambda s: s.update(title=["x"]), ["title: must be a string, not a list"]),
]


@pytest.mark.parametrize(
    ("change", "expected"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_refused_with_a_message_naming_where(
    change: Callable[[dict[str, Any]], object], expected: list[str]
) -> None:
    message = refused(json.dumps(edited(change)))
    for part in expected:
        assert part in message


def test_user_text_in_a_message_stays_on_one_line() -> None:
    message = refused(edited(lambda s: s["steps"].append({"op": "fly\nover\r{0}"})))
    assert "unknown op 'fly\\nover\\r{0}'" in message


# ---------------------------------------------------------------------------------------------------------
# Migration and dirty-log tracking


def test_migration_logs_every_slot_and_undoes_only_its_own_logging() -> None:
    slots = [{"id": 1, "base_gfn": 0, "npages": 16}, {"id": 2, "base_gfn": 16, "npages": 16}]
    during: list[dict[str, Any]] = [
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "migrate_begin"},
        {"op": "get_dirty_log", "slot": 2},  # logged by the migration
        {"op": "migrate_round"},
        {"op": "migrate_end"},
        {"op": "get_dirty_log", "slot": 1},  # logged before the migration, so still logged
    ]
    parse_scenario(minimal(*during, memslots=slots))
    after = [*during, {"op": "get_dirty_log", "slot": 2}]
    assert refused(minimal(*after, memslots=slots)) == (
        "step 6 (get_dirty_log): slot 2 is not dirty-logged at this point"
    )


def test_a_second_migration_may_follow_the_first() -> None:
    steps = [{"op": "migrate_begin"}, {"op": "migrate_end"}, {"op": "migrate_begin"}, {"op": "migrate_end"}]
    parse_scenario(minimal(*steps))


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([{"op": "migrate_round"}], "step 0 (migrate_round): no migration is running"),
        ([{"op": "migrate_end"}], "step 0 (migrate_end): no migration is running"),
        (
            [{"op": "migrate_begin"}, {"op": "migrate_end"}, {"op": "migrate_round"}],
            "step 2 (migrate_round): no migration is running",
        ),
        (
            [{"op": "migrate_begin"}, {"op": "migrate_begin"}],
            "step 1 (migrate_begin): a migration is already running",
        ),
    ],
)
def test_migration_steps_out_of_order_are_refused(steps: list[dict[str, Any]], expected: str) -> None:
    assert expected in refused(minimal(*steps))


# ---------------------------------------------------------------------------------------------------------
# Accesses against memslots


def test_a_run_may_cross_adjacent_slots_but_not_a_gap() -> None:
    adjacent = [{"id": 1, "base_gfn": 0, "npages": 8}, {"id": 2, "base_gfn": 8, "npages": 8}]
    parse_scenario(minimal({"op": "write", "gfn": 4, "count": 12}, memslots=adjacent))
    gap = [{"id": 1, "base_gfn": 0, "npages": 8}, {"id": 2, "base_gfn": 9, "npages": 8}]
    assert refused(minimal({"op": "write", "gfn": 4, "count": 12}, memslots=gap)) == (
        "step 0 (write): gfn 0x8 (access 5 of 12) is outside every memslot"
    )
    # A stride can jump over the gap.
    parse_scenario(minimal({"op": "write", "gfn": 7, "count": 2, "stride": 9}, memslots=gap))


def test_stride_zero_repeats_one_gfn() -> None:
    scenario = parse_scenario(minimal({"op": "read", "gfn": "0x3ff", "count": MAX_COUNT, "stride": 0}))
    step = scenario.steps[0]
    assert isinstance(step, ReadStep)
    assert (step.count, step.stride) == (MAX_COUNT, 0)


def test_long_runs_are_checked_per_slot_not_per_access() -> None:
    slots = [{"id": i, "base_gfn": i * 0x4000, "npages": 0x4000} for i in range(MAX_MEMSLOTS)]
    steps = [{"op": "read", "gfn": 0, "count": MAX_COUNT}] * 4
    start = time.perf_counter()
    parse_scenario(minimal(*steps, memslots=slots))
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------------------
# Limits


def test_at_most_64_memslots() -> None:
    slots = [{"id": i, "base_gfn": i, "npages": 1} for i in range(MAX_MEMSLOTS)]
    parse_scenario(minimal(memslots=slots))
    slots.append({"id": 99, "base_gfn": 1000, "npages": 1})
    assert refused(minimal(memslots=slots)) == "memslots: must hold between 1 and 64 memslots, not 65"


def test_at_most_2_20_pages_in_all_slots() -> None:
    half = MAX_TOTAL_PAGES // 2
    slots = [{"id": 1, "base_gfn": 0, "npages": half}, {"id": 2, "base_gfn": half, "npages": half}]
    parse_scenario(minimal(memslots=slots))
    slots.append({"id": 3, "base_gfn": MAX_TOTAL_PAGES, "npages": 1})
    assert refused(minimal(memslots=slots)) == (
        "memslots: 1048577 pages in all, more than the limit of 1048576 (4 GiB)"
    )


def test_at_most_100000_steps() -> None:
    parse_scenario(minimal(*[{"op": "flush_tlb"}] * MAX_STEPS))
    assert refused(minimal(*[{"op": "flush_tlb"}] * (MAX_STEPS + 1))) == (
        "steps: must hold at most 100000 steps, not 100001"
    )


def test_at_most_2_22_guest_accesses_in_all() -> None:
    slots = [{"id": 1, "base_gfn": 0, "npages": MAX_TOTAL_PAGES}]
    steps = [{"op": "read", "gfn": 0, "count": MAX_COUNT}] * (MAX_ACCESSES // MAX_COUNT)
    parse_scenario(minimal(*steps, memslots=slots))
    steps.append({"op": "write", "gfn": 0})
    assert refused(minimal(*steps, memslots=slots)) == (
        "step 4 (write): count 1 takes the scenario to 4194305 guest accesses, more than the limit of 4194304"
    )


def test_input_over_1_mib_is_refused_before_parsing() -> None:
    # Padded with whitespace: no single text may be that long (MAX_DESCRIPTION_CHARS).
    text = json.dumps(minimal())
    padded = text[:-1] + " " * (MAX_SCENARIO_BYTES - 1000 - len(text)) + "}"
    assert len(padded) <= MAX_SCENARIO_BYTES
    parse_scenario(padded)
    too_big = json.dumps(minimal(description="x" * MAX_SCENARIO_BYTES))
    assert refused(too_big) == "scenario: larger than 1048576 bytes (1 MiB)"
    assert refused(too_big.encode()) == "scenario: larger than 1048576 bytes (1 MiB)"
    # Counted in UTF-8 bytes, not characters: 400k three-byte characters are 1.2 MB.
    wide = json.dumps(minimal(description="✓" * 400_000), ensure_ascii=False)
    assert len(wide) < MAX_SCENARIO_BYTES
    assert refused(wide) == "scenario: larger than 1048576 bytes (1 MiB)"
    # Garbage too big to be JSON is refused for its size, not parsed.
    assert refused("[" * (MAX_SCENARIO_BYTES + 1)) == "scenario: larger than 1048576 bytes (1 MiB)"


# ---------------------------------------------------------------------------------------------------------
# JSON text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{\n  "format": "sptelab-scenario",\n  "version" 1\n}',
            "scenario: not valid JSON (line 3, column 13)",
        ),
        ("", "scenario: not valid JSON (line 1, column 1)"),
        ("[" * 100_000, "scenario: not valid JSON: nested too deeply"),
        ('{"a": ' * 50_000 + "1" + "}" * 50_000, "scenario: not valid JSON: nested too deeply"),
        ("1" * 5000, "scenario: not valid JSON: a number has too many digits"),
        ('{"version": NaN}', "scenario: not valid JSON: NaN is not a JSON number"),
        ('{"version": -Infinity}', "scenario: not valid JSON: -Infinity is not a JSON number"),
        ('{"version": 1, "version": 1}', "scenario: not valid JSON: the key 'version' appears twice"),
        ("[]", "scenario: must be a JSON object, not a list"),
        ("null", "scenario: must be a JSON object, not null"),
        ('"0x200"', "scenario: must be a JSON object, not the string '0x200'"),
    ],
)
def test_bad_json_is_refused_with_its_position(text: str, expected: str) -> None:
    assert expected in refused(text)


def test_bytes_must_be_utf8() -> None:
    assert refused(b'{"title": "\xff"}') == "scenario: not valid UTF-8 (byte 11)"


def test_a_deeply_nested_value_inside_a_valid_object_is_refused_cleanly() -> None:
    nested: Any = 1
    for _ in range(5000):
        nested = [nested]
    assert "title: must be a string, not a list" in refused(edited(lambda s: s.update(title=nested)))
    assert "scenario: unknown field 'deep'" in refused(edited(lambda s: s.update(deep=nested)))


# ---------------------------------------------------------------------------------------------------------
# JSON Schema


def test_json_schema_describes_the_format() -> None:
    schema = scenario_json_schema()
    json.dumps(schema)  # serialisable
    definitions: Any = schema["$defs"]
    assert definitions["Memslot"]["required"] == ["id", "base_gfn", "npages"]
    # An access names a gfn, or under shadow paging a guest-virtual address.
    assert definitions["WriteStep"]["required"] == ["op"]
    assert definitions["WriteStep"]["oneOf"] == [{"required": ["gfn"]}, {"required": ["gva"]}]
    assert definitions["FlushTlbStep"]["required"] == ["op"]
    properties: Any = schema["properties"]
    assert properties["memslots"]["maxItems"] == MAX_MEMSLOTS
    assert definitions["Vm"]["properties"]["vcpus"]["anyOf"][0]["maximum"] == MAX_VCPUS
    assert definitions["Memslot"]["properties"]["npages"]["anyOf"][0]["minimum"] == 1


def test_json_schema_accepts_the_example_and_rejects_an_unknown_op() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = scenario_json_schema()
    jsonschema.validate(EXAMPLE, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(edited(lambda s: s["steps"].append({"op": "fly"})), schema)


# ---------------------------------------------------------------------------------------------------------
# Nothing but ScenarioError, whatever the input


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["0x200", "0x3ff", "0x400", "read", "write", "note", "2M", "4K", *STEP_OPS]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["op", "gfn", "count", "stride", "vcpu", "slot", "text", "id", "npages", "x"])
            | st.text(max_size=6),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


def _replace_somewhere(value: Any, path: list[int], new: Any) -> Any:
    """`value` with one of its leaves or containers, picked by `path`, replaced by `new`."""
    if not path or not isinstance(value, dict | list) or not value:
        return new
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))
    key = keys[path[0] % len(keys)]
    copied = copy.copy(value)
    copied[key] = _replace_somewhere(value[key], path[1:], new)
    return copied


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_values_give_only_scenario_errors(value: Any) -> None:
    try:
        parse_scenario(json.dumps(value))
    except ScenarioError as error:
        assert "\n" not in str(error)
    if isinstance(value, dict):
        with contextlib.suppress(ScenarioError):
            parse_scenario(value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=4), json_values)
def test_mutated_examples_give_a_scenario_or_a_scenario_error(path: list[int], new: Any) -> None:
    mutated = _replace_somewhere(EXAMPLE, path, new)
    try:
        scenario = parse_scenario(json.dumps(mutated))
    except ScenarioError as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(scenario, Scenario)
        assert parse_scenario(scenario.canonical()) == scenario


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_gives_only_scenario_errors(data: str | bytes) -> None:
    with pytest.raises(ScenarioError):
        parse_scenario(data)


# ---------------------------------------------------------------------------------------------------------
# A note per preset (docs/contract-extensions.md, "Scenario ops")

PER_PRESET = {"zap": "the zap preset's own sentence", "lazy-buggy": "the buggy preset's own sentence"}


def test_a_note_may_say_it_per_preset_and_falls_back_to_text() -> None:
    scenario = parse_scenario(minimal({"op": "note", "text": "shared", "by_preset": PER_PRESET}))
    (note,) = scenario.steps
    assert isinstance(note, NoteStep)
    assert note.text_for("zap") == PER_PRESET["zap"]
    assert note.text_for("lazy-buggy") == PER_PRESET["lazy-buggy"]
    # Presets the note does not name, and a what-if policy (no preset), read the shared text.
    assert note.text_for("lazy") == note.text_for("modern") == note.text_for(None) == "shared"
    assert scenario.canonical()["steps"] == [{"op": "note", "text": "shared", "by_preset": PER_PRESET}]
    assert parse_scenario(scenario.canonical()) == scenario


def test_a_note_without_by_preset_keeps_the_canonical_form_it_always_had() -> None:
    # Contract §1's note is {"op", "text"}: the share code of a scenario with notes must not change.
    absents: list[dict[str, object]] = [{}, {"by_preset": None}, {"by_preset": {}}]
    for absent in absents:
        scenario = parse_scenario(minimal({"op": "note", "text": "Logging is on.", **absent}))
        assert scenario.canonical()["steps"] == [{"op": "note", "text": "Logging is on."}]
        assert step_to_json(scenario.steps[0]) == {"op": "note", "text": "Logging is on."}


@pytest.mark.parametrize("name", ["buggy", "fixed", "Lazy", ""])
def test_a_note_naming_an_unknown_preset_is_refused_by_name(name: str) -> None:
    note = {"op": "note", "text": "x", "by_preset": {name: "y"}}
    message = refused(minimal({"op": "write", "gfn": 0x200}, note))
    assert message.startswith("step 1 (note): by_preset names ")
    assert repr(name) in message
    assert "zap, lazy-buggy, lazy, modern" in message


def test_a_per_preset_note_is_held_to_the_note_cap() -> None:
    long = "x" * (2048 + 1)
    message = refused(minimal({"op": "note", "text": "x", "by_preset": {"lazy": long}}))
    assert message == (
        "step 0 (note): by_preset.lazy is 2,049 characters long, more than the 2,048 a note may hold"
    )
    assert refused(minimal({"op": "note", "text": "x", "by_preset": {"lazy": 3}})) == (
        "step 0 (note): by_preset.lazy must be a string, not the number 3"
    )
    assert refused(minimal({"op": "note", "text": "x", "by_preset": ["lazy"]})) == (
        "step 0 (note): by_preset must be an object, not a list"
    )


def test_equal_per_preset_notes_repeated_still_parse_as_equal_steps() -> None:
    # Equal steps share one object (Scenario._share_equal_steps); a by_preset mapping must not break that.
    note = {"op": "note", "text": "again", "by_preset": {"modern": "again, as 6.13 tells it"}}
    other = {"op": "note", "text": "again", "by_preset": {"modern": "told otherwise"}}
    scenario = parse_scenario(minimal(note, note, other))
    first, second, third = scenario.steps
    assert first is second and first is not third
    assert isinstance(third, NoteStep) and third.text_for("modern") == "told otherwise"
    # A step is a value: equal notes hash alike, as every other frozen step does.
    assert hash(first) == hash(NoteStep(text="again", by_preset={"modern": "again, as 6.13 tells it"}))
    assert len({first, second, third}) == 2


def test_the_schema_lists_the_presets_a_note_may_name() -> None:
    schema: Any = scenario_json_schema()
    definition = schema["$defs"]["NoteStep"]["properties"]["by_preset"]
    (mapping,) = [branch for branch in definition["anyOf"] if branch.get("type") == "object"]
    assert mapping["propertyNames"] == {"enum": ["zap", "lazy-buggy", "lazy", "modern"]}
    assert mapping["additionalProperties"] == {"type": "string", "maxLength": 2048}
    jsonschema = pytest.importorskip("jsonschema")
    schema = scenario_json_schema()
    jsonschema.validate(minimal({"op": "note", "text": "x", "by_preset": PER_PRESET}), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(minimal({"op": "note", "text": "x", "by_preset": {"buggy": "y"}}), schema)


def test_share_codes_of_notes_are_the_contract_s_and_carry_by_preset() -> None:
    def contract_code(canonical: dict[str, Any]) -> str:
        # Contract §6, written out: sorted keys, no spaces, UTF-8, raw DEFLATE level 9, base64url unpadded.
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        packer = zlib.compressobj(level=9, wbits=-15)
        return "1." + base64.urlsafe_b64encode(packer.compress(text) + packer.flush()).rstrip(b"=").decode()

    plain = minimal({"op": "note", "text": "Logging is on."})
    canonical = {
        "format": "sptelab-scenario", "version": 1, "title": "", "description": "",
        "vm": {"vcpus": 1, "max_page_level": "2M", "ept_ad": True},
        "memslots": [{"id": 1, "base_gfn": 0x200, "npages": 512, "host_page": "4K", "base_pfn": 0x80000,
                      "host_writable": True, "host_cow": "copy"}],
        "steps": [{"op": "note", "text": "Logging is on."}],
    }  # fmt: skip
    assert encode_scenario(plain) == contract_code(canonical)
    told = minimal({"op": "note", "text": "Logging is on.", "by_preset": PER_PRESET})
    code = encode_scenario(told)
    assert code != encode_scenario(plain)
    assert parse_scenario(decode_code(code)) == parse_scenario(told)


def test_the_built_in_per_preset_notes_each_say_something() -> None:
    told = [
        (name, index, step)
        for name, scenario in builtin_scenarios()
        for index, step in enumerate(scenario.steps)
        if isinstance(step, NoteStep) and step.by_preset
    ]
    assert {name for name, _, _ in told} >= {"migration-verdict", "write-storm-2m"}
    for name, index, step in told:
        assert step.by_preset is not None
        for preset, text in step.by_preset.items():
            # As a lesson's note must (tests/test_library.py): say what to look at, in a sentence or more.
            assert len(text) >= 60, (name, index, preset)
            assert text != step.text, (name, index, preset)
