"""What routes share: the store of caches, and the parsing of the player's and compare view's query.

`Store` holds the caches (resolved scenarios, runs, built views) and is the only way routes reach the
engine's runs. `PlayerQuery` is a page's query, checked: the scenario, the preset and switches, the
step (clamped into range), the selected spte; `Links` builds every URL a page links to or pushes, always
in the same parameter order, so equal states have equal URLs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, Request

from app.cache import Lru, RunCache
from app.errors import bad_request
from app.render import first_sentence
from app.settings import Settings, get_settings
from app.sources import Source, SourceCache
from app.viewmodel import (
    InspectorView,
    Location,
    PlayView,
    ScenarioCard,
    inspector_view,
    location_param,
    parse_location,
    play_view,
    scenario_card,
)
from engine.policy import (
    DEFAULT_PRESET,
    PRESETS,
    SWITCH_VALUES,
    Policy,
    PolicyError,
    make_policy,
    variant_of,
)
from scenarios import builtin_names


class Store:
    """Every cache of the app; one per app instance."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sources = SourceCache(settings.cache_scenarios)
        self.runs = RunCache(settings)
        self.views: Lru[tuple[object, ...], PlayView] = Lru(settings.cache_views)
        self.inspections: Lru[tuple[object, ...], InspectorView] = Lru(settings.cache_views)
        self.landing: dict[str, object] = {}
        # Rendered pages and partials by URL: (body, headers).
        self.pages: Lru[tuple[str, ...], tuple[bytes, dict[str, str]]] = Lru(settings.cache_pages)

    def play_view(self, query: PlayerQuery) -> PlayView:
        return self.view_at(query.source, query.policy, query.step, query.selected)

    def view_at(self, source: Source, policy: Policy, step: int, selected: Location | None) -> PlayView:
        key = (source.code, policy, step, selected)
        view = self.views.get(key)
        if view is not None:
            return view
        run = self.runs.get(source.code, source.scenario, policy)
        shown = run.at(step)
        try:
            view = play_view(
                shown,
                variant_of(policy),
                selected,
                tree_cap=self.settings.tree_sptes,
                bitmap_cells=self.settings.bitmap_cells,
            )
        finally:
            run.park(shown)
        self.views.put(key, view)
        self.runs.trim()
        return view

    def inspector(self, query: PlayerQuery) -> InspectorView | None:
        if query.selected is None:
            return None
        key = (query.source.code, query.policy, query.step, query.selected)
        view = self.inspections.get(key)
        if view is not None:
            return view
        run = self.runs.get(query.source.code, query.source.scenario, query.policy)
        history = run.history(query.selected, query.step)
        shown = run.at(query.step)
        try:
            view = inspector_view(shown.sim, query.selected, history)
        finally:
            run.park(shown)
        self.inspections.put(key, view)
        return view


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


# ---------------------------------------------------------------------------------------------------------
# Query parsing


def _switch_text(value: str | bool) -> str:
    return str(value).lower()


def parse_policy_param(text: str) -> dict[str, str]:
    """`K=V,K=V` into overrides; each is checked by make_policy later."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise bad_request(
                f"policy={text[:80]!r}: expected SWITCH=VALUE pairs separated by commas, e.g. wp_large=zap"
            )
        out[name.strip()] = value.strip()
    return out


def resolve_policy(variant: str, overrides: Mapping[str, str | bool]) -> tuple[Policy, dict[str, str]]:
    """The policy, and the overrides that really change the preset, in switch order, as text."""
    try:
        policy = make_policy(variant, overrides)
    except PolicyError as error:
        raise bad_request(str(error)) from None
    preset = PRESETS[variant].as_json()
    mine = policy.as_json()
    canonical = {
        name: _switch_text(mine[name])
        for name in SWITCH_VALUES
        if name in overrides and mine[name] != preset[name]
    }
    return policy, canonical


def parse_step(raw: str | None, total: int) -> tuple[int, str]:
    """The step to show, and a notice when the asked one was out of range (then it is clamped)."""
    if raw is None or raw.strip() == "":
        return 0, ""
    text = raw.strip()
    if not (text.isdigit() or (text.startswith("-") and text[1:].isdigit())) or len(text) > 12:
        raise bad_request(f"step={raw[:20]!r}: must be a whole number from 0 to {total}")
    step = int(text)
    if step < 0:
        return 0, f"Step {step} is before the start; showing step 0."
    if step > total:
        return total, f"Step {step} is past the end; showing the last step, {total}."
    return step, ""


@dataclass(frozen=True, slots=True)
class PlayerQuery:
    source: Source
    variant: str
    overrides: dict[str, str]
    policy: Policy
    step: int
    notice: str = ""
    selected: Location | None = None
    links: Links = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "links", Links(self.source.param, self.variant, self.overrides, self.selected)
        )

    @property
    def total(self) -> int:
        return self.source.total

    @property
    def variant_label(self) -> str:
        return variant_of(self.policy) or "custom"


def _one(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise bad_request(f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def player_query(request: Request, store: Store) -> PlayerQuery:
    """The query of /play: scenario=NAME|s=CODE, variant, step, policy, spte."""
    source = store.sources.resolve(_one(request, "scenario"), _one(request, "s"))
    variant = _one(request, "variant") or DEFAULT_PRESET
    policy, overrides = resolve_policy(variant, parse_policy_param(_one(request, "policy") or ""))
    step, notice = parse_step(_one(request, "step"), source.total)
    selected = None
    spte = _one(request, "spte")
    if spte:
        try:
            selected = parse_location(spte)
        except ValueError as error:
            raise bad_request(str(error)) from None
    return PlayerQuery(source, variant, overrides, policy, step, notice, selected)


def whatif_overrides(request: Request, variant: str) -> dict[str, str]:
    """The what-if form's `sw.SWITCH=VALUE` fields as overrides (all of them; resolve_policy keeps the
    ones that change the preset)."""
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("sw."):
            out[key.removeprefix("sw.")] = value
    return out


def compare_variants(raw: str | None) -> list[str]:
    if raw is None or not raw.strip():
        return list(PRESETS)
    names: list[str] = []
    for item in raw.split(","):
        name = item.strip()
        if not name:
            continue
        if name not in PRESETS:
            raise bad_request(f"unknown variant {name[:40]!r} (known: {', '.join(PRESETS)})")
        if name not in names:
            names.append(name)
    if not names:
        raise bad_request("variants= names no preset")
    return names


# ---------------------------------------------------------------------------------------------------------
# Links


@lru_cache(maxsize=64)
def _source_query(source: tuple[str, str]) -> str:
    """The scenario's part of a link, `s=<code>` or `scenario=<name>`: a share code is kilobytes, and a
    page holds dozens of links to the same scenario, so it is quoted once."""
    return urlencode([source], safe=":,=")


@dataclass(frozen=True, slots=True)
class Links:
    """Every URL of one player state; parameters always in the same order."""

    source: tuple[str, str]
    variant: str
    overrides: Mapping[str, str]
    selected: Location | None

    @property
    def policy_param(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.overrides.items())

    def play(self, step: int, *, spte: str | None = None, keep_spte: bool = True) -> str:
        params = [("variant", self.variant), ("step", str(step))]
        if self.overrides:
            params.append(("policy", self.policy_param))
        if spte is not None:
            params.append(("spte", spte))
        elif keep_spte and self.selected is not None:
            params.append(("spte", location_param(self.selected)))
        return "/play?" + _source_query(self.source) + "&" + urlencode(params, safe=":,=")

    def compare(self, step: int, variants: list[str] | None = None) -> str:
        params = [("variants", ",".join(variants or list(PRESETS))), ("step", str(step))]
        return "/compare?" + _source_query(self.source) + "&" + urlencode(params, safe=":,=")

    def download(self) -> str:
        return "/download?" + urlencode([self.source])

    def with_variant(self, variant: str) -> Links:
        return Links(self.source, variant, {}, self.selected)


def builtin_cards(store: Store) -> list[ScenarioCard]:
    """The landing page's scenario list: each built-in run under every preset once, then cached."""
    cached = store.landing.get("cards")
    if isinstance(cached, list):
        return cached
    cards = []
    for name in builtin_names():
        source = store.sources.resolve(name, None)
        scenario = source.scenario
        runs = {}
        for variant, policy in PRESETS.items():
            run = store.runs.get(source.code, scenario, policy)
            finished = run.finished
            runs[variant] = (list(run.records), finished)
        cards.append(
            scenario_card(
                name, scenario.title or name, first_sentence(scenario.description), source.total, runs
            )
        )
    store.landing["cards"] = cards
    return cards
