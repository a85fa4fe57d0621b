"""The op table (engine/ops): every op of the format is registered once with every facet, the table, the
`Step` union and contract §1 name the same ops, and the facets do what the code relies on them for."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, get_args

from app.predict import ASKERS
from app.views.narration import TELLERS
from cli.report import describe_op
from engine.estimate import Pricer, StepPrice
from engine.ops.base import Access, Ask, Harvest, OpSpec, Tell
from engine.ops.registry import OPS, STEP_OPS, STEP_TYPES, Step, access_count, describe, op_spec, step_to_json
from engine.policy import make_policy
from engine.scenario import parse_scenario
from engine.simulation import Simulation

# The ops of contract §1's step table, as the contract lists them.
CONTRACT_OPS = frozenset(
    {
        "read",
        "write",
        "enable_dirty_log",
        "disable_dirty_log",
        "get_dirty_log",
        "flush_tlb",
        "zap_all",
        "note",
        "migrate_begin",
        "migrate_round",
        "migrate_end",
    }
)
# The ops the project adds, each documented in the extensions' own table of scenario ops.
EXTENSIONS = Path(__file__).resolve().parents[1] / "docs" / "contract-extensions.md"

# One step of every op, inside a scenario that lets each of them run in this order.
EVERY_OP: list[dict[str, object]] = [
    {"op": "read", "gfn": "0x200", "count": 512, "stride": 2, "vcpu": 1},
    {"op": "write", "gfn": "0x250"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "get_dirty_log", "slot": 1},
    {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 64},
    {"op": "reset_dirty_ring"},
    {"op": "disable_dirty_log", "slot": 1},
    {"op": "flush_tlb"},
    {"op": "zap_all"},
    {"op": "note", "text": "look", "by_preset": {"lazy": "look closer"}},
    {"op": "migrate_begin"},
    {"op": "migrate_round"},
    {"op": "migrate_end"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "get_dirty_log", "slot": 1, "split": True},
    {"op": "get_dirty_log_end", "slot": 1},
    {"op": "write_gpte", "table": "0x202", "index": 5, "pte": "0x300067", "vcpu": 1},
    {"op": "invlpg", "gva": "0xa00000"},
    {"op": "set_cr3", "space": 0, "vcpu": 1},
]

WORDS = [
    "read gfn 0x200 ×512 stride 2 vCPU 1",
    "write gfn 0x250",
    "enable_dirty_log slot 1",
    "get_dirty_log slot 1",
    "clear_dirty_log slot 1 pages 0x0+64",
    "reset_dirty_ring",
    "disable_dirty_log slot 1",
    "flush_tlb",
    "zap_all",
    "note",
    "migrate_begin",
    "migrate_round",
    "migrate_end",
    "enable_dirty_log slot 1",
    "get_dirty_log slot 1 (split)",
    "get_dirty_log_end slot 1",
    "write_gpte 0x202[5] = 0x300067 vCPU 1",
    "invlpg 0xa00000",
    "set_cr3 space 0 vCPU 1",
]


def _scenario() -> Any:
    return parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            # Shadow paging, where every op runs (the guest's paging operations only there).
            "vm": {"vcpus": 2, "mmu": "shadow"},
            "memslots": [{"id": 1, "base_gfn": "0x200", "npages": 1024}],
            "guest": {"tables_at": "0x200"},
            "steps": EVERY_OP,
        }
    )


def test_the_union_the_table_and_the_contract_name_the_same_ops() -> None:
    assert [spec.model for spec in OPS.values()] == list(STEP_TYPES)
    assert list(OPS) == list(STEP_OPS)
    assert sorted({str(step["op"]) for step in EVERY_OP}) == sorted(OPS)
    text = EXTENSIONS.read_text(encoding="utf-8")
    section = text.split("## Scenario ops (contract §1)", 1)[1].split("\n## ", 1)[0]
    table = section.split("| op | fields |", 1)[1].split("\n\n", 1)[0]
    extended = {
        name for row in table.splitlines() for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1:2][0])
    }
    assert extended == {
        "clear_dirty_log",
        "reset_dirty_ring",
        "get_dirty_log_end",
        "write_gpte",
        "invlpg",
        "set_cr3",
    }
    assert CONTRACT_OPS | extended == set(OPS)
    assert not CONTRACT_OPS & extended


def test_every_facet_is_declared_and_none_has_a_default() -> None:
    fields = dataclasses.fields(OpSpec)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
    for name, spec in OPS.items():
        for f in fields:
            value = getattr(spec, f.name)
            if f.name in ("live", "refusal", "harvest"):
                continue
            assert value is not None, (name, f.name)
            if f.name not in ("model", "ask", "tell", "begins_migration", "ends_migration"):
                assert callable(value), (name, f.name)
        # The live backend either expresses the op or says why it cannot, never both, never neither.
        assert (spec.live is None) != (spec.refusal is None), name
        assert isinstance(spec.ask, Ask) and isinstance(spec.tell, Tell), name
        assert spec.harvest is None or isinstance(spec.harvest, Harvest), name


def test_every_kind_of_question_and_sentence_has_its_shell_side() -> None:
    assert set(ASKERS) == set(Ask) - {Ask.NOTHING}
    assert set(TELLERS) == set(Tell)


def test_one_wording_for_the_web_and_the_cli() -> None:
    steps = _scenario().steps
    assert [describe(step) for step in steps] == WORDS
    assert [describe_op(step) for step in steps] == [*WORDS[:9], "note: look", *WORDS[10:]]


def test_facets_read_the_typed_step() -> None:
    steps = _scenario().steps
    assert op_spec(steps[0]).access(steps[0]) == Access(vcpu=1, gfn=0x200, count=512, stride=2, write=False)
    assert [access_count(step) for step in steps] == [512, 1] + [0] * 17
    assert [op_spec(step).slot(step) for step in steps] == [None, None, 1, 1, 1, None, 1] + [None] * 6 + [
        1,
        1,
        1,
        None,
        None,
        None,
    ]
    assert op_spec(steps[4]).pages(steps[4]) == (0, 64)
    note = op_spec(steps[9]).note(steps[9])
    assert note is not None and note.text_for("lazy") == "look closer" and note.text_for("zap") == "look"
    assert [op_spec(step).note(step) is None for step in steps].count(False) == 1
    harvests = {spec.name for spec in OPS.values() if spec.harvest is not None}
    assert harvests == {"get_dirty_log", "reset_dirty_ring", "migrate_round", "migrate_end"}
    assert [spec.name for spec in OPS.values() if spec.ends_migration] == ["migrate_end"]
    assert [spec.name for spec in OPS.values() if spec.begins_migration] == ["migrate_begin"]
    # Page 0x10 of slot 1: a CLEAR of 0+64 restarts it outside ring mode, one of 64+64 does not.
    clear = steps[4]
    assert op_spec(clear).restarts_page(clear, "manual", 1, 0x10)
    assert not op_spec(clear).restarts_page(clear, "ring", 1, 0x10)
    assert not op_spec(clear).restarts_page(clear, "manual", 1, 0x50)


def test_step_to_json_keeps_the_result_shape() -> None:
    steps = _scenario().steps
    assert step_to_json(steps[0]) == {"op": "read", "gfn": 0x200, "count": 512, "stride": 2, "vcpu": 1}
    assert list(step_to_json(steps[4])) == ["op", "slot", "first", "num"]
    plain = parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "memslots": [{"id": 1, "base_gfn": 0, "npages": 1}],
            "steps": [{"op": "note", "text": "x"}],
        }
    )
    assert step_to_json(plain.steps[0]) == {"op": "note", "text": "x"}  # no by_preset when it has none


class _Target:
    """A LiveTarget that records what each op's `live` facet asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def access(self, vcpu: int, gfn: int, count: int, stride: int, write: bool) -> None:
        self.calls.append(("access", vcpu, gfn, count, stride, write))

    def set_logging(self, slot: int, on: bool) -> None:
        self.calls.append(("set_logging", slot, on))

    def get_dirty_log(self, slot: int) -> list[int] | None:
        self.calls.append(("get_dirty_log", slot))
        return [1]

    def clear_dirty_log(self, slot: int, first: int, num: int) -> None:
        self.calls.append(("clear_dirty_log", slot, first, num))

    def reset_dirty_ring(self) -> list[int] | None:
        self.calls.append(("reset_dirty_ring",))
        return [2]

    def migrate_begin(self) -> None:
        self.calls.append(("migrate_begin",))

    def migrate_round(self) -> list[int]:
        self.calls.append(("migrate_round",))
        return [3]

    def migrate_end(self) -> list[int]:
        self.calls.append(("migrate_end",))
        return [4]


def test_each_op_expresses_itself_on_the_live_target_or_says_why_not() -> None:
    target = _Target()
    logs = []
    for step in _scenario().steps:
        spec = op_spec(step)
        if spec.live is None:
            assert spec.refusal
            continue
        logs.append(spec.live(target, step))
    assert target.calls == [
        ("access", 1, 0x200, 512, 2, False),
        ("access", 0, 0x250, 1, 1, True),
        ("set_logging", 1, True),
        ("get_dirty_log", 1),
        ("clear_dirty_log", 1, 0, 64),
        ("reset_dirty_ring",),
        ("set_logging", 1, False),
        ("migrate_begin",),
        ("migrate_round",),
        ("migrate_end",),
        ("set_logging", 1, True),
        ("get_dirty_log", 1),
    ]
    assert logs == [None, None, None, [1], None, [2], None, None, None, [3], [4], None, [1]]


def test_every_op_runs_and_is_priced() -> None:
    scenario = _scenario()
    sim = Simulation(scenario, make_policy("modern"))
    results = sim.run()
    assert [result.op for result in results] == list(scenario.steps)
    pricer = Pricer(scenario)
    prices = [pricer.step(step) for step in scenario.steps]
    assert all(isinstance(price, StepPrice) and price.run >= 1.0 for price in prices)
    assert prices[0].accesses > 0 and prices[9].run == 1.0  # the note costs its bookkeeping only


def test_the_union_is_discriminated_by_op() -> None:
    members = get_args(get_args(Step)[0])
    assert all(cls.model_fields["op"].is_required() is False for cls in members)
