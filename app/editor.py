"""The scenario editor's status line: whether the text is a valid scenario, and if not, where the
refusal points (its step and field), read from the error's own data."""

from __future__ import annotations

from typing import Any

from engine.scenario import ScenarioError, parse_scenario


def error_location(error: ScenarioError) -> tuple[str, str]:
    """(step index or "", field or "") of a refused scenario, for the editor's data attributes: read from
    the error's own data, never from its wording."""
    return ("" if error.step is None else str(error.step)), error.field


def editor_status(text: str) -> dict[str, Any]:
    if not text.strip():
        return {
            "valid": False,
            "message": "The editor is empty: write or paste a scenario.",
            "step": "",
            "field": "",
            "kind": "",
        }
    try:
        scenario = parse_scenario(text)
    except ScenarioError as error:
        step, field = error_location(error)
        return {"valid": False, "message": str(error), "step": step, "field": field, "kind": error.kind.value}
    steps = len(scenario.steps)
    slots = len(scenario.memslots)
    summary = (
        f"Valid: {scenario.title or 'untitled'}, {steps} step{'s' if steps != 1 else ''},"
        f" {slots} memslot{'s' if slots != 1 else ''}."
    )
    return {"valid": True, "message": summary, "step": "", "field": "", "kind": ""}
