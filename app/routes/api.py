"""The JSON API of contract section 5, plus the scenario format's JSON Schema.

Errors are `{"detail": "..."}` with the contract's statuses (app.main's handlers): 400 undecodable or a
bad parameter, 404 unknown scenario, 413 too large (a body over 1 MiB, a run over the request budget),
422 invalid scenario.

Request bodies are read as strictly as scenario files (engine.scenario.loads_json): NaN, Infinity,
repeated keys, invalid UTF-8, numbers of thousands of digits and nesting too deep for the parser are each
refused with a message naming them, where FastAPI would say only "There was an error parsing the body".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from app.build import built
from app.errors import AppError, bad_request, invalid_scenario, not_found
from app.livekernel import API_PRESETS, checked_overrides, live_result, require_kernel
from app.query import compare_variants, query_param
from app.replay import run_all
from app.run_budget import check_budget, too_heavy_to_write
from app.sources import scenario_from_code, share_code
from app.store import Store, StoreDep
from app.workshop import workshop_off
from engine.canonical import iterdumps
from engine.codec import CodecError, encode_scenario
from engine.estimate import estimate_result
from engine.policy import DEFAULT_PRESET, PolicyError, make_policy
from engine.result import result_json
from engine.scenario import (
    Scenario,
    ScenarioError,
    ScenarioTooLargeError,
    loads_json,
    parse_scenario,
    scenario_json_schema,
)
from engine.simulation import Simulation
from scenarios import builtin_names, builtin_scenarios, load_builtin_text

# A streamed result is sent in pieces of about this many characters.
_CHUNK = 1 << 16


class ApiError(BaseModel):
    """Every refusal of the API: one line saying what was wrong and, where it can, how to fix it."""

    detail: str


# The refusals any route of the API may answer with (the URL and body limits apply to all of them).
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ApiError, "description": "Undecodable: malformed JSON, a bad parameter or share code"},
    413: {
        "model": ApiError,
        "description": "Too large: a body over 1 MiB, a code inflating past it, a run over the budget",
    },
    414: {"model": ApiError, "description": "A URL over 8 KiB"},
    422: {"model": ApiError, "description": "An invalid scenario: the message names the step and field"},
}
# The worked example, as the documented example of a request body.
_EXAMPLE: dict[str, Any] = json.loads(load_builtin_text("worked-example"))


class _StrictJsonRequest(Request):
    """A request whose JSON body is decoded by engine.scenario.loads_json (see the module docstring)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = loads_json(body)
            except ScenarioError as error:
                # FastAPI re-raises an HTTPException from here as it is; app.main words it as JSON.
                status = 413 if isinstance(error, ScenarioTooLargeError) else 400
                detail = str(error).removeprefix("scenario: ")
                raise HTTPException(status, f"the request body: {detail}") from None
        return self._json


class _StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict


router = APIRouter(prefix="/api", route_class=_StrictJsonRoute, responses=_ERRORS)


class ScenarioItem(BaseModel):
    name: str
    title: str


class RunRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"scenario": _EXAMPLE, "variant": "lazy", "detail": "summary"}]},
    )

    scenario: dict[str, Any] = Field(description="a scenario object (contract section 1)")
    variant: str = Field(DEFAULT_PRESET, description="policy preset: zap, lazy-buggy or lazy")
    policy: dict[str, str | bool] = Field(default_factory=dict, description="switches over the preset")
    detail: Literal["full", "summary"] = "full"


class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"scenario": _EXAMPLE}]})

    scenario: dict[str, Any]


class EncodeResponse(BaseModel):
    code: str
    url: str


def _parse(raw: dict[str, Any]) -> Scenario:
    try:
        return parse_scenario(raw)
    except ScenarioError as error:
        raise invalid_scenario(str(error)) from None


def _json(value: object) -> Response:
    return Response(json.dumps(value, ensure_ascii=False), media_type="application/json")


def _run_key(scenario: Scenario) -> str:
    """The run cache's key of a scenario: its share code, so that the pages reuse the run, or for one too
    large to have a code, a digest of its canonical text (which no share code can equal)."""
    try:
        return encode_scenario(scenario)
    except CodecError:
        text = json.dumps(scenario.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _chunks(pieces: Iterable[str]) -> Iterator[bytes]:
    """Canonical text pieces (many and small) joined into chunks of about _CHUNK characters."""
    buffer: list[str] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= _CHUNK:
            yield "".join(buffer).encode("utf-8")
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode("utf-8")


@router.get("/scenarios", response_model=list[ScenarioItem])
def list_scenarios() -> list[ScenarioItem]:
    return [ScenarioItem(name=name, title=scenario.title) for name, scenario in builtin_scenarios()]


@router.get("/scenarios/{name}", responses={404: {"model": ApiError, "description": "No such scenario"}})
def get_scenario(name: str) -> Response:
    if name not in builtin_names():
        raise not_found(f"no built-in scenario named {name[:60]!r} (known: {', '.join(builtin_names())})")
    return _json(json.loads(load_builtin_text(name)))


@router.post("/run", dependencies=[workshop_off("POST /api/run (running your own scenario)")])
async def run(request: Request, body: RunRequest, store: StoreDep) -> Response:
    """Run a scenario and return the result object of contract section 4 (sorted keys, byte-stable).

    Refused (413) before it runs when the run and the writing of its final state would cost more than
    the request budget, and, for the full detail, when the result would be larger than /result.json
    writes out (`Settings.result_work`). The result is streamed: its final state can be a million rows.
    """
    return await built(request, lambda: _run(body, store))


def _run(body: RunRequest, store: Store) -> Response:
    scenario = _parse(body.scenario)
    try:
        policy = make_policy(body.variant, body.policy)
    except PolicyError as error:
        raise bad_request(str(error)) from None
    total = len(scenario.steps)
    need = estimate_result(scenario, full=False)
    check_budget(store.settings, scenario, need, steps=total, doing="running this scenario")
    if body.detail == "full":
        limit = store.settings.result_work
        why = too_heavy_to_write(scenario, policy, limit)
        if why:
            raise AppError(
                413,
                f"the full-detail result of this run is too large to send: {why}, and this server writes"
                f" out at most {limit:,} (SPTELAB_RESULT_WORK; a unit is about 10 µs of the server's time"
                ' or 100 bytes of result); ask for "detail": "summary", or run it with the command line:'
                " sptelab run FILE --json",
            )
    sim = Simulation(scenario, policy, detail=body.detail)
    steps = run_all(sim)
    return StreamingResponse(
        _chunks(iterdumps(result_json(sim, steps, stream=True))), media_type="application/json"
    )


@router.post(
    "/encode",
    response_model=EncodeResponse,
    dependencies=[workshop_off("POST /api/encode (making share codes)")],
)
def encode(body: EncodeRequest) -> EncodeResponse:
    code = share_code(_parse(body.scenario))
    return EncodeResponse(code=code, url=f"/play?s={code}")


@router.get("/decode")
def decode(request: Request, s: str = Query(..., description="a share code, 1.…")) -> Response:
    # FastAPI would take the last of two s= silently; a URL that says two things is refused.
    query_param(request, "s")
    return _json(scenario_from_code(s).canonical())


class RealRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"scenario": _EXAMPLE}]})

    scenario: dict[str, Any] = Field(description="a scenario object (contract section 1)")
    compare: list[str] = Field(default_factory=lambda: list(API_PRESETS), description="presets to compare")
    policy: dict[str, str | bool] = Field(default_factory=dict, description="switches over every preset")
    guest: Literal["native", "emulated"] = Field(
        default="native",
        description="the live VM's guest: native (64-bit with page tables, run through the kernel's MMU"
        " where the kernel runs it natively) or emulated (32-bit, paging off)",
    )


@router.post(
    "/real",
    responses={503: {"model": ApiError, "description": "This server cannot open /dev/kvm"}},
    dependencies=[workshop_off("POST /api/real (running scenarios on this machine's kernel)")],
)
async def real(request: Request, body: RealRequest, store: StoreDep) -> Response:
    """Run the scenario's accesses on this machine's kernel through /dev/kvm: the object `sptelab real
    --json` prints (contract section 3). Its `live` object says how the kernel ran the guest (its MMU or
    its instruction emulator, from its statistics) and what was checked: on a kernel that emulated the
    guest, its dirty-log ioctls against the engine's emulated guest (`live.oracle`), not its MMU; the
    presets' logs in `compare` are then what each preset's MMU would log."""
    require_kernel(store.settings)
    return await built(request, lambda: _real(body, store), turns=False)


def _real(body: RealRequest, store: Store) -> Response:
    scenario = _parse(body.scenario)
    presets = compare_variants(",".join(body.compare), API_PRESETS)
    overrides = checked_overrides(body.policy, presets)
    return _json(live_result(store.settings, _run_key(scenario), scenario, presets, overrides, body.guest))


@router.get("/schema")
def schema() -> Response:
    """The JSON Schema of the scenario format (parse_scenario checks more than a schema can say)."""
    return _json(scenario_json_schema())
