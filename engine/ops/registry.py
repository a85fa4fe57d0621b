"""The op table: every op of the format, its model in the `Step` union and its `OpSpec` in `OPS`.

To add an op, write its module in engine/ops/ (its model and every facet of `OpSpec`) and list it here
twice: in `Step` (parsing, the error for an unknown op, the JSON schema and `step_to_json` follow) and in
`_SPECS`. tests/test_op_table.py checks that the two and contract §1's table name the same ops.
"""

from collections.abc import Mapping
from typing import Annotated, Any, get_args

from pydantic import Field

from engine.ops.access import READ, WRITE, ReadStep, WriteStep
from engine.ops.base import OpModel, OpSpec
from engine.ops.flush_tlb import FLUSH_TLB, FlushTlbStep
from engine.ops.guest_paging import INVLPG, SET_CR3, WRITE_GPTE, InvlpgStep, SetCr3Step, WriteGpteStep
from engine.ops.harvest import (
    CLEAR,
    GET,
    GET_END,
    RESET_RING,
    ClearDirtyLogStep,
    GetDirtyLogEndStep,
    GetDirtyLogStep,
    ResetDirtyRingStep,
)
from engine.ops.logging import DISABLE, ENABLE, DisableDirtyLogStep, EnableDirtyLogStep
from engine.ops.migration import BEGIN, END, ROUND, MigrateBeginStep, MigrateEndStep, MigrateRoundStep
from engine.ops.note import NOTE, NoteStep
from engine.ops.zap_all import ZAP_ALL, ZapAllStep

Step = Annotated[
    ReadStep
    | WriteStep
    | EnableDirtyLogStep
    | DisableDirtyLogStep
    | GetDirtyLogStep
    | GetDirtyLogEndStep
    | ClearDirtyLogStep
    | ResetDirtyRingStep
    | FlushTlbStep
    | ZapAllStep
    | NoteStep
    | WriteGpteStep
    | InvlpgStep
    | SetCr3Step
    | MigrateBeginStep
    | MigrateRoundStep
    | MigrateEndStep,
    Field(discriminator="op"),
]

STEP_TYPES: tuple[type[OpModel], ...] = get_args(get_args(Step)[0])
STEP_OPS: tuple[str, ...] = tuple(str(cls.model_fields["op"].default) for cls in STEP_TYPES)

_SPECS: tuple[OpSpec[Any], ...] = (
    READ,
    WRITE,
    ENABLE,
    DISABLE,
    GET,
    GET_END,
    CLEAR,
    RESET_RING,
    FLUSH_TLB,
    ZAP_ALL,
    NOTE,
    WRITE_GPTE,
    INVLPG,
    SET_CR3,
    BEGIN,
    ROUND,
    END,
)

# By name, in the union's order.
OPS: Mapping[str, OpSpec[Any]] = {spec.name: spec for spec in _SPECS}
_BY_TYPE: Mapping[type[OpModel], OpSpec[Any]] = {spec.model: spec for spec in _SPECS}


def op_spec(step: OpModel) -> OpSpec[Any]:
    """The spec of a step's op."""
    return _BY_TYPE[type(step)]


def describe(step: OpModel) -> str:
    """The op in a few words (`write gfn 0x250`, `clear_dirty_log slot 1 pages 0x0+64`): the one
    wording of the web pages and the CLI."""
    return op_spec(step).describe(step)


def access_count(step: OpModel) -> int:
    """The guest accesses the step makes (0 for an op that makes none)."""
    access = op_spec(step).access(step)
    return access.count if access is not None else 0


def step_to_json(step: OpModel) -> dict[str, object]:
    """The step as the result's `op` object shows it: `op` first, then every field with defaults filled."""
    return {"op": step.op, **step.json_fields()}


__all__ = [
    "OPS",
    "STEP_OPS",
    "STEP_TYPES",
    "ClearDirtyLogStep",
    "DisableDirtyLogStep",
    "EnableDirtyLogStep",
    "FlushTlbStep",
    "GetDirtyLogEndStep",
    "GetDirtyLogStep",
    "InvlpgStep",
    "MigrateBeginStep",
    "MigrateEndStep",
    "MigrateRoundStep",
    "NoteStep",
    "ReadStep",
    "ResetDirtyRingStep",
    "SetCr3Step",
    "Step",
    "WriteGpteStep",
    "WriteStep",
    "ZapAllStep",
    "access_count",
    "describe",
    "op_spec",
    "step_to_json",
]
