"""The JSON API of contract section 5, plus the scenario format's JSON Schema.

Errors are `{"detail": "..."}` with the contract's statuses (app.main's handlers): 400 undecodable or a
bad parameter, 404 unknown scenario, 413 too large, 422 invalid scenario.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.errors import bad_request, invalid_scenario, not_found
from app.sources import scenario_from_code
from engine.canonical import dumps
from engine.codec import encode_scenario
from engine.policy import DEFAULT_PRESET, PolicyError, make_policy
from engine.result import result_json
from engine.scenario import ScenarioError, parse_scenario, scenario_json_schema
from engine.simulation import Simulation
from scenarios import builtin_names, builtin_scenarios, load_builtin_text

router = APIRouter(prefix="/api")


class ScenarioItem(BaseModel):
    name: str
    title: str


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenario: dict[str, Any] = Field(description="a scenario object (contract section 1)")
    variant: str = Field(DEFAULT_PRESET, description="policy preset: zap, lazy-buggy or lazy")
    policy: dict[str, str | bool] = Field(default_factory=dict, description="switches over the preset")
    detail: Literal["full", "summary"] = "full"


class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenario: dict[str, Any]


class EncodeResponse(BaseModel):
    code: str
    url: str


def _parse(raw: dict[str, Any]) -> Any:
    try:
        return parse_scenario(raw)
    except ScenarioError as error:
        raise invalid_scenario(str(error)) from None


def _json(value: object) -> Response:
    return Response(json.dumps(value, ensure_ascii=False), media_type="application/json")


@router.get("/scenarios", response_model=list[ScenarioItem])
def list_scenarios() -> list[ScenarioItem]:
    return [ScenarioItem(name=name, title=scenario.title) for name, scenario in builtin_scenarios()]


@router.get("/scenarios/{name}")
def get_scenario(name: str) -> Response:
    if name not in builtin_names():
        raise not_found(f"no built-in scenario named {name[:60]!r} (known: {', '.join(builtin_names())})")
    return _json(json.loads(load_builtin_text(name)))


@router.post("/run")
def run(body: RunRequest) -> Response:
    """Run a scenario and return the result object of contract section 4 (sorted keys, byte-stable)."""
    scenario = _parse(body.scenario)
    try:
        policy = make_policy(body.variant, body.policy)
    except PolicyError as error:
        raise bad_request(str(error)) from None
    sim = Simulation(scenario, policy, detail=body.detail)
    return Response(dumps(result_json(sim, sim.run())), media_type="application/json")


@router.post("/encode", response_model=EncodeResponse)
def encode(body: EncodeRequest) -> EncodeResponse:
    code = encode_scenario(_parse(body.scenario))
    return EncodeResponse(code=code, url=f"/play?s={code}")


@router.get("/decode")
def decode(s: str = Query(..., description="a share code, 1.…")) -> Response:
    return _json(scenario_from_code(s).canonical())


@router.get("/schema")
def schema() -> Response:
    """The JSON Schema of the scenario format (parse_scenario checks more than a schema can say)."""
    return _json(scenario_json_schema())
