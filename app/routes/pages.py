"""The HTML pages: the landing page with the editor, the player, the compare view, download and upload.

Each route parses its query, asks the store for the views, and renders a page, or, for an htmx request,
only the blocks that change, swapped out of band. In workshop mode (`Settings.workshop`) the landing page
has no editor, and the editor's routes (POST /play, /validate, /upload) answer 403: the built-in
scenarios and share links still play.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.build import built, cached
from app.contexts import COMPARE_BLOCKS, PLAY_BLOCKS, compare_context, play_context, slug
from app.editor import editor_status
from app.errors import URL_TOO_LONG_HINT, AppError, bad_request, invalid_scenario
from app.htmx import page
from app.links import Links
from app.query import (
    compare_variants,
    parse_step,
    player_query,
    query_param,
    resolve_policy,
    whatif_overrides,
)
from app.render import base_path, render_page
from app.run_budget import check_budget
from app.sources import share_code
from app.store import StoreDep, builtin_cards
from app.views.library import story
from app.views.play import PlayView
from app.views.tree import TreeView
from engine.codec import MAX_URL_BYTES
from engine.policy import PRESETS
from engine.scenario import MAX_SCENARIO_BYTES, ScenarioError, ScenarioTooLargeError, parse_scenario
from scenarios import load_builtin_text

router = APIRouter()

EXAMPLE = "worked-example"

WORKSHOP_REFUSAL = "this server runs in workshop mode: the editor is off"
WORKSHOP_HINT = (
    "Play one of the built-in scenarios, or open a share link (a /play?s=… URL) someone gave you;"
    " to try your own scenario, run sptelab on your own machine (sptelab serve) or ask for the link."
)


def editor_on(request: Request) -> None:
    """Refuse the editor's routes in workshop mode (a dependency: before the handler reads a scenario)."""
    if request.app.state.settings.workshop:
        raise AppError(403, WORKSHOP_REFUSAL, hint=WORKSHOP_HINT)


EditorOn = Depends(editor_on)


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, store: StoreDep) -> Response:
    # The cards summarise every built-in lesson under every preset: runs, the first time.
    return await built(request, lambda: _index(request, store))


def _index(request: Request, store: StoreDep) -> Response:
    cards = builtin_cards(store)
    # The page opens with the story of the worked example, its links computed from the example's runs.
    told = next((story(card) for card in cards if card.name == EXAMPLE), None)
    if request.app.state.settings.workshop:
        return page(request, "index.html", {"cards": cards, "story": told})
    text = load_builtin_text(EXAMPLE)
    context = {"cards": cards, "story": told, "editor_text": text, "status": editor_status(text)}
    return page(request, "index.html", context)


@router.get("/play", response_class=HTMLResponse)
async def play(request: Request, store: StoreDep) -> Response:
    if any(key.startswith("sw.") for key in request.query_params):
        return await built(request, lambda: _whatif_redirect(request, store))
    return await cached(request, store.pages, lambda: _play(request, store))


def _play(request: Request, store: StoreDep) -> HTMLResponse:
    query = player_query(request, store)
    view = store.play_view(query)
    inspector = store.inspector(query)
    # After the view: the questions are one step from the state it built.
    predict = store.predict(query) if query.predict else None
    context = play_context(request, query, view, inspector, predict)
    # The slider that asked keeps its own position (replacing it would end the drag).
    skip = ("scrubber",) if request.headers.get("HX-Trigger") == "step-slider" else ()
    push = query.links.play(query.step, answer=query.answer)
    return page(request, "play.html", context, blocks=PLAY_BLOCKS, skip=skip, push=push)


def _whatif_redirect(request: Request, store: StoreDep) -> Response:
    """The what-if form sends every switch as sw.NAME; the player's URL names only those that change the
    preset (policy=K=V,K=V)."""
    query = player_query(request, store)
    _, overrides = resolve_policy(query.variant, whatif_overrides(request, query.variant))
    links = replace(query.links, overrides=overrides)
    return RedirectResponse(links.play(query.step), status_code=303)


@router.post("/play", response_class=HTMLResponse, dependencies=[EditorOn])
def play_scenario(request: Request, store: StoreDep, scenario: Annotated[str, Form()] = "") -> Response:
    """The editor's "play this": check the scenario, then go to its share URL."""
    try:
        parsed = parse_scenario(scenario)
    except ScenarioError as error:
        context = {
            "cards": builtin_cards(store),
            "editor_text": scenario,
            "status": editor_status(scenario),
            # The error takes the focus, so the page opens on it and the scenario, not at the top.
            "editor_refused": True,
        }
        return page(request, "index.html", context, status=_scenario_status(error))
    return _redirect_to_code(request, share_code(parsed))


@router.post("/validate", response_class=HTMLResponse, dependencies=[EditorOn])
def validate(request: Request, scenario: Annotated[str, Form()] = "") -> Response:
    """The editor's live check: always 200, so htmx swaps the status in; the status says valid or not."""
    return page(
        request, "index.html", {"status": editor_status(scenario)}, blocks=("editor_status",), partial=True
    )


@router.get("/compare", response_class=HTMLResponse)
async def compare(request: Request, store: StoreDep) -> Response:
    return await cached(request, store.pages, lambda: _compare(request, store))


def _compare(request: Request, store: StoreDep) -> HTMLResponse:
    source = store.sources.resolve(query_param(request, "scenario"), query_param(request, "s"))
    variants = compare_variants(query_param(request, "variants"))
    step, notice = parse_step(query_param(request, "step"), source.total)
    # One run per preset, each to the step shown: refused before any of them runs if over the budget.
    doing = f"comparing {len(variants)} presets at step {step}"
    work = source.work_to(step)
    check_budget(
        store.settings, source.scenario, work, steps=step, runs=len(variants), doing=doing, earlier=True
    )
    # Each column's view and tree from one state, taken once.
    views: dict[str, PlayView] = {}
    trees: dict[str, TreeView] = {}
    for name in variants:
        views[name], trees[name] = store.compare_column(source, PRESETS[name], step)
    context = compare_context(request, source, variants, step, notice, views, trees)
    push = context["links"].compare(step, variants)
    return page(request, "compare.html", context, blocks=COMPARE_BLOCKS, push=push)


@router.get("/download")
def download(request: Request, store: StoreDep) -> Response:
    source = store.sources.resolve(query_param(request, "scenario"), query_param(request, "s"))
    if source.name is not None:
        body = load_builtin_text(source.name)
        filename = source.name
    else:
        body = json.dumps(source.scenario.canonical(), indent=2, ensure_ascii=False) + "\n"
        filename = slug(source.scenario.title)
    headers = {"Content-Disposition": f'attachment; filename="{filename}.json"'}
    return Response(body.encode("utf-8"), media_type="application/json", headers=headers)


@router.post("/upload", response_class=HTMLResponse, dependencies=[EditorOn])
def upload(request: Request, file: Annotated[UploadFile | None, File()] = None) -> Response:
    if file is None:
        raise bad_request("no file uploaded: choose a scenario file (JSON) first")
    data = file.file.read(MAX_SCENARIO_BYTES + 1)
    if len(data) > MAX_SCENARIO_BYTES:
        raise AppError(413, f"the file is larger than {MAX_SCENARIO_BYTES} bytes (1 MiB), the scenario limit")
    try:
        parsed = parse_scenario(data)
    except ScenarioError as error:
        raise AppError(_scenario_status(error), str(error), hint=invalid_scenario("").hint) from None
    return _redirect_to_code(request, share_code(parsed))


def _scenario_status(error: ScenarioError) -> int:
    """413 for a scenario refused for its size alone, 422 for anything else wrong with it."""
    return 413 if isinstance(error, ScenarioTooLargeError) else 422


def _redirect_to_code(request: Request, code: str) -> Response:
    url = Links(("s", code), "lazy", {}, None, base=base_path(request.scope)).play(0)
    if len(url.encode("utf-8")) > MAX_URL_BYTES:
        raise AppError(
            414,
            f"the scenario's link would be {len(url.encode('utf-8'))} bytes, more than the {MAX_URL_BYTES}"
            " a link may hold",
            hint=URL_TOO_LONG_HINT,
        )
    return RedirectResponse(url, status_code=303)


__all__ = ["render_page", "router"]
