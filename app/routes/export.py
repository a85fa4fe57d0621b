"""Exports of the player: one step as an SVG picture, the whole run as the result JSON (contract §4).

Both take the player's query (`scenario=NAME` or `s=CODE`, `variant`, `policy`; the picture also `step`
and `spte`) and answer with an attachment. The picture is drawn from the very view the player renders
(`Store.play_view`), so it shows what the player shows. The result is a fresh full-detail run, because the
run cache keeps only the summary pass and a capped trace of the shown step; the cache's summary pass is
is not used: the result is priced first (engine.estimate), so a run too heavy to write out in full is
refused before anything runs.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.build import built
from app.contexts import absolute, slug
from app.errors import AppError, bad_request
from app.query import PlayerQuery, player_query
from app.replay import run_all
from app.run_budget import check_budget, too_heavy_to_write
from app.sources import Source
from app.store import Store, StoreDep
from app.svgexport import Caption, step_svg
from app.views.presets import preset_description
from engine.canonical import dumps
from engine.result import result_json
from engine.simulation import Simulation

router = APIRouter()


@router.get("/export.svg")
async def export_svg(request: Request, store: StoreDep) -> Response:
    """The player's view at `step` as a standalone SVG (app/svgexport.py)."""
    return await built(request, lambda: _export_svg(request, store))


def _export_svg(request: Request, store: StoreDep) -> Response:
    query = player_query(request, store)
    if query.notice:  # the player clamps a step out of range; a file named after the step must not
        raise bad_request(
            f"step={request.query_params.get('step', '')[:20]!r} is out of range: this scenario has"
            f" steps 0 to {query.total}"
        )
    caption = Caption(
        title=_title(query.source),
        preset=_preset(query),
        preset_description=preset_description(query.variant_label),
        share_url=absolute(request, query.links.play(query.step)),
    )
    body = step_svg(store.play_view(query), caption)
    filename = f"{_file_stem(query)}-step-{query.step}.svg"
    return _attachment(body, "image/svg+xml", filename)


@router.get("/result.json")
async def export_result(request: Request, store: StoreDep) -> Response:
    """The result object of contract §4 for the whole run, every step in full detail (`step` is ignored)."""
    return await built(request, lambda: _export_result(request, store))


def _export_result(request: Request, store: StoreDep) -> Response:
    query = player_query(request, store)
    _refuse_heavy(store, query)
    sim = Simulation(query.source.scenario, query.policy, detail="full")
    body = dumps(result_json(sim, run_all(sim), stream=True))
    return _attachment(body, "application/json", f"{_file_stem(query)}-result.json")


def _refuse_heavy(store: Store, query: PlayerQuery) -> None:
    """413, before anything runs, when the whole run is over the request budget or running it in full
    detail and writing its result is priced over `Settings.result_work` (engine.estimate)."""
    source = query.source
    check_budget(
        store.settings,
        source.scenario,
        source.work_to(source.total),
        steps=source.total,
        doing="writing out the result of the whole run",
    )
    limit = store.settings.result_work
    why = too_heavy_to_write(source.scenario, query.policy, limit)
    if why:
        raise _too_heavy(query, why, limit)


def _too_heavy(query: PlayerQuery, why: str, limit: int) -> AppError:
    policy = "".join(f" --policy {name}={value}" for name, value in query.overrides.items())
    return AppError(
        413,
        f"The full result of this run is too large to download here: {why}, and this server writes out"
        f" at most {limit:,} (SPTELAB_RESULT_WORK; a unit is about 10 µs of the server's time or 100 bytes"
        " of result: a fault, an spte write, a trace event, a harvested slot).",
        hint=(
            "Download the scenario and run it on your own machine:"
            f" sptelab run FILE --json --variant {query.variant}{policy}"
            " (add --detail summary for a result without per-fault rows and trace events)."
        ),
    )


def _title(source: Source) -> str:
    return source.scenario.title or source.name or "Untitled scenario"


def _preset(query: PlayerQuery) -> str:
    if not query.overrides:
        return query.variant
    return f"{query.variant} + " + ", ".join(f"{name}={value}" for name, value in query.overrides.items())


def _file_stem(query: PlayerQuery) -> str:
    """`<scenario>-<variant>`: the built-in's name or the title's slug, as /download names the scenario;
    `-custom` after the preset when what-if switches change it."""
    source = query.source
    name = source.name or slug(source.scenario.title)
    return f"{name}-{query.variant}{'-custom' if query.overrides else ''}"


def _attachment(body: str, media_type: str, filename: str) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(body.encode("utf-8"), media_type=media_type, headers=headers)
