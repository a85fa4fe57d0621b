"""The scenario format of contract §1: what a user asks the simulated VM to do.

A scenario is checked whole before anything runs; every refusal is a `ScenarioError` whose text is one
line naming where the problem is (`step 4 (write): gfn 0x400 is outside every memslot`). The package by
concern: `fields` (the field types), `cost` (the limits, and the refusal of a text too large), `wording`
(refusals in words), `models` (the VM, memslots, the scenario), `checks` (the whole scenario), `parse`
(JSON text to a scenario, and the JSON Schema), `guest` (the guest's page tables under shadow paging).
The ops' models are in engine/ops.
"""

from engine.ops.note import NOTE_PRESETS
from engine.ops.registry import (
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
    SetCr3Step,
    Step,
    WriteGpteStep,
    WriteStep,
    ZapAllStep,
    step_to_json,
)
from engine.scenario.cost import (
    MAX_ACCESSES,
    MAX_COUNT,
    MAX_DESCRIPTION_CHARS,
    MAX_MEMSLOTS,
    MAX_NOTE_CHARS,
    MAX_SCENARIO_BYTES,
    MAX_STEPS,
    MAX_TITLE_CHARS,
    MAX_TOTAL_PAGES,
    MAX_VCPUS,
    ScenarioTooLargeError,
)
from engine.scenario.fields import PAGE_LEVELS
from engine.scenario.guest import Guest, GuestMap, GuestSpace
from engine.scenario.models import Memslot, Scenario, Vm
from engine.scenario.parse import loads_json, parse_scenario, scenario_json_schema, under_mmu
from engine.scenario.wording import ErrorKind, ScenarioError

__all__ = [
    "MAX_ACCESSES",
    "MAX_COUNT",
    "MAX_DESCRIPTION_CHARS",
    "MAX_MEMSLOTS",
    "MAX_NOTE_CHARS",
    "MAX_SCENARIO_BYTES",
    "MAX_STEPS",
    "MAX_TITLE_CHARS",
    "MAX_TOTAL_PAGES",
    "MAX_VCPUS",
    "NOTE_PRESETS",
    "PAGE_LEVELS",
    "STEP_OPS",
    "ClearDirtyLogStep",
    "DisableDirtyLogStep",
    "EnableDirtyLogStep",
    "ErrorKind",
    "FlushTlbStep",
    "GetDirtyLogEndStep",
    "GetDirtyLogStep",
    "Guest",
    "GuestMap",
    "GuestSpace",
    "InvlpgStep",
    "Memslot",
    "MigrateBeginStep",
    "MigrateEndStep",
    "MigrateRoundStep",
    "NoteStep",
    "ReadStep",
    "ResetDirtyRingStep",
    "Scenario",
    "ScenarioError",
    "ScenarioTooLargeError",
    "SetCr3Step",
    "Step",
    "Vm",
    "WriteGpteStep",
    "WriteStep",
    "ZapAllStep",
    "loads_json",
    "parse_scenario",
    "scenario_json_schema",
    "step_to_json",
    "under_mmu",
]
