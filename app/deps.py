"""What routes share: the store of caches, and the parsing of the player's and compare view's query.

`Store` holds the caches (resolved scenarios, runs, built views) and is the only way routes reach the
engine's runs. `PlayerQuery` is a page's query, checked: the scenario, the preset and switches, the
step (clamped into range), the selected spte, and the player's modes (predict mode with its answer and
score, presentation mode with its enlarged panel); `Links` builds every URL a page links to or pushes,
always in the same parameter order, so equal states have equal URLs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, Request

from app.budget_bytes import SOURCE_QUERY_ENTRIES, ByteBudget, Lru, weigh_any
from app.cache import RunCache, Shown, StepRecord, check_budget
from app.errors import bad_request
from app.predict import PredictPanel, Question, judge, predict_panel, question_for
from app.render import base_path, first_sentence
from app.settings import Settings, get_settings
from app.sources import Source, SourceCache
from app.views.inspector import InspectorView, inspector_view
from app.views.library import ScenarioCard, scenario_card
from app.views.play import PlayView, play_view
from app.views.text import Location, location_param, parse_location
from app.views.timeline import TimelineView, timeline_view
from app.views.tree import TreeBuilder, TreeView
from engine.ops.registry import describe, op_spec
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

# A cached page's bytes beyond its body and key: the tuple, the headers dict, the entry.
PAGE_OVERHEAD = 600
# The sptes a compare column's tree draws one by one: four trees side by side, each a glance.
COMPARE_TREE_SPTES = 20
# The timeline's lanes may together cost this fraction of one request's run budget (Store.timeline_budget).
TIMELINE_SHARE = 6


@dataclass(frozen=True, slots=True)
class LaneRun:
    """One lane of the timeline: a preset's name, the policy its run uses, and whether it is the page's
    own (the player's preset, with its what-if switches), with the words that say so."""

    variant: str
    policy: Policy
    own: bool = False
    note: str = ""


def page_weight(key: tuple[str, ...], value: tuple[bytes, dict[str, str]]) -> int:
    body, headers = value
    texts = sum(len(part) for part in key) + sum(len(k) + len(v) for k, v in headers.items())
    return PAGE_OVERHEAD + len(body) + texts


class Store:
    """Every cache of the app; one per app instance."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # One byte budget (SPTELAB_CACHE_BYTES) over every cache below (and app.livekernel's results, which
        # create_app puts under it).
        self.budget = ByteBudget(settings.cache_bytes)
        budget = self.budget
        self.sources = SourceCache(settings.cache_scenarios, budget)
        self.runs = RunCache(settings, budget)
        self.views: Lru[tuple[object, ...], PlayView] = Lru(settings.cache_views, budget, weigh_any)
        self.inspections: Lru[tuple[object, ...], InspectorView] = Lru(
            settings.cache_views, budget, weigh_any
        )
        # The timeline strips and compare's small trees, by what they are a function of.
        self.timelines: Lru[tuple[object, ...], TimelineView] = Lru(settings.cache_views, budget, weigh_any)
        self.compare_trees: Lru[tuple[object, ...], TreeView] = Lru(settings.cache_views, budget, weigh_any)
        # Predict mode's questions by (code, policy, step index); a 1-tuple, since a step may ask nothing.
        self.questions: Lru[tuple[object, ...], tuple[Question | None]] = Lru(
            settings.cache_views, budget, weigh_any
        )
        # The landing page's cards: one per built-in lesson, a fixed set.
        self.landing: dict[str, object] = {}
        # Rendered pages and partials by canonical key (app.pagectx.page_key): (body, headers).
        self.pages: Lru[tuple[str, ...], tuple[bytes, dict[str, str]]] = Lru(
            settings.cache_pages, budget, page_weight
        )

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
            view = self._play_view(shown, policy, selected)
        finally:
            run.park(shown)
        self.views.put(key, view)
        self.runs.trim()
        return view

    def _play_view(self, shown: Shown, policy: Policy, selected: Location | None) -> PlayView:
        """Every panel of the player at a state, drawn within the settings' caps."""
        return play_view(
            shown,
            variant_of(policy),
            selected,
            tree_cap=self.settings.tree_sptes,
            bitmap_cells=self.settings.bitmap_cells,
        )

    def timeline_budget(self) -> int:
        """The work the timeline may ask of the runs beyond what its page does anyway: a share of one
        request's budget (the workshop's, in workshop mode), so a strip never makes a page much dearer."""
        settings = self.settings
        budget = settings.run_budget
        if settings.workshop:
            budget = settings.workshop_budget or settings.run_budget // 4
        return budget // TIMELINE_SHARE

    def timeline(
        self,
        source: Source,
        lanes: Sequence[LaneRun],
        step: int,
        *,
        paid: bool = False,
        hide_ahead: bool = False,
    ) -> TimelineView:
        """The timeline strip at `step`, from each lane's step records. The records reach the end of the
        scenario when every lane's whole run fits `timeline_budget` (each summary pass then runs on to
        the end, once: a step is never run again for the strip); else the step shown, when that fits or
        the page has run every lane that far anyway (`paid`: compare); else only the own lane's, which
        the page ran to the step shown. So the strip is a function of the URL, never of which runs
        happen to be further along. `hide_ahead` (predict mode) leaves the steps after the one shown
        unknown: their markers would give the answers away."""
        total = source.total
        budget = self.timeline_budget()
        if source.work_to(total) * len(lanes) <= budget:
            extent = total
        elif paid or source.work_to(step) * len(lanes) <= budget:
            extent = step
        else:
            extent = -1  # the own lane to the step shown, the others not run
        if hide_ahead:
            extent = min(extent, step)
        key = (source.code, tuple(lanes), step, extent)
        view = self.timelines.get(key)
        if view is not None:
            return view
        rows: list[tuple[str, bool, str, Sequence[StepRecord]]] = []
        for lane in lanes:
            reach = extent if extent >= 0 else (step if lane.own else 0)
            records: Sequence[StepRecord] = ()
            if reach > 0:
                run = self.runs.get(source.code, source.scenario, lane.policy)
                run.ensure(reach)
                records = run.records[:reach]
            rows.append((lane.variant, lane.own, lane.note, records))
        steps = source.scenario.steps
        ops = [s.op for s in steps]

        def describe(n: int) -> str:
            return op_spec(steps[n - 1]).describe(steps[n - 1])

        view = timeline_view(step, total, ops, rows, describe=describe)
        self.timelines.put(key, view)
        self.runs.trim()
        return view

    def compare_column(self, source: Source, policy: Policy, step: int) -> tuple[PlayView, TreeView]:
        """A compare column: the preset's view at the step and its page-table tree (the player's tree with
        a small drawing budget), both built from one state. A 1 GiB state may not fit the budget parked
        beside three others: taken once, it is never thawed or replayed a second time for the tree."""
        view_key = (source.code, policy, step, None)
        key = (source.code, policy, step)
        view, tree = self.views.get(view_key), self.compare_trees.get(key)
        if view is not None and tree is not None:
            return view, tree
        run = self.runs.get(source.code, source.scenario, policy)
        shown = run.at(step)
        try:
            if view is None:
                view = self._play_view(shown, policy, None)
            if tree is None:
                tree = TreeBuilder(shown.sim.kvm, shown.touched, None, COMPARE_TREE_SPTES).build()
        finally:
            run.park(shown)
        self.views.put(view_key, view)
        self.compare_trees.put(key, tree)
        self.runs.trim()
        return view, tree

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

    def question(self, source: Source, policy: Policy, index: int) -> Question | None:
        """The question about step `index`, read off that step's result: the state after it, which is one
        step past the state it is asked at (the cursor the page's view left behind)."""
        key = (source.code, policy, index)
        hit = self.questions.get(key)
        if hit is not None:
            return hit[0]
        run = self.runs.get(source.code, source.scenario, policy)
        shown = run.at(index + 1)
        try:
            question = question_for(shown)
        finally:
            run.park(shown)
        self.questions.put(key, (question,))
        self.runs.trim()
        return question

    def predict(self, query: PlayerQuery) -> PredictPanel:
        """Predict mode at step n: the verdict on `answer=` (about step n-1), then the question about step
        n. Asked in that order, each is one step from a state the page already built, so neither replays."""
        feedback = None
        if query.answer is not None:
            asked = self.question(query.source, query.policy, query.step - 1) if query.step > 0 else None
            if asked is None:
                where = f"step #{query.step}" if query.step > 0 else "step 0 (nothing has run)"
                raise bad_request(
                    f"answer={query.answer!r}: {where} asks no question, so there is nothing to answer;"
                    " leave answer= out"
                )
            if not asked.has(query.answer):
                raise bad_request(
                    f"answer={query.answer!r} is not a choice of step #{asked.step + 1}'s question"
                    f" (choices: {', '.join(asked.keys)})"
                )
            feedback = judge(asked, query.answer)
        question = None
        upcoming = note = ""
        if query.step < query.total:
            question = self.question(query.source, query.policy, query.step)
            step = query.source.scenario.steps[query.step]
            upcoming = describe(step)
            note = told.text if (told := op_spec(step).note(step)) is not None else ""
        return predict_panel(query.step, query.total, query.score, feedback, question, upcoming, note)


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
    """`K=V,K=V` into overrides, each switch at most once; each is checked by make_policy later."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise bad_request(
                f"policy={text[:80]!r}: expected SWITCH=VALUE pairs separated by commas, e.g. wp_large=zap"
            )
        name = name.strip()
        if name in out:
            # A link that says two things about one switch is refused, not read as the last of them.
            raise bad_request(
                f"policy={text[:80]!r}: the switch {name[:40]!r} is given twice; give each switch once"
            )
        out[name] = value.strip()
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


_WHOLE = re.compile(r"-?[0-9]+")


def parse_step(raw: str | None, total: int) -> tuple[int, str]:
    """The step to show, and a notice when the asked one was out of range (then it is clamped)."""
    if raw is None or raw.strip() == "":
        return 0, ""
    text = raw.strip()
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses.
    if not _WHOLE.fullmatch(text) or len(text) > 12:
        raise bad_request(f"step={raw[:20]!r}: must be a whole number from 0 to {total}")
    step = int(text)
    if step < 0:
        return 0, f"Step {step} is before the start; showing step 0."
    if step > total:
        return total, f"Step {step} is past the end; showing the last step, {total}."
    return step, ""


# ---------------------------------------------------------------------------------------------------------
# The player's modes: predict (mode=predict, answer=KEY, score=RIGHT-ASKED), presentation (present=1,
# focus=PANEL). Checked before any engine work: a bad value is a 400 naming the parameter.

PREDICT_MODE = "predict"
# The panels presentation mode can enlarge, in the order of their number keys (1-8); the first is the
# default.
FOCUS_PANELS: tuple[tuple[str, str], ...] = (
    ("tree", "Tables"),
    ("bitmap", "Bitmap"),
    ("trace", "Trace"),
    ("counters", "Counters"),
    ("violations", "Invariants"),
    ("inspector", "Inspector"),
    ("rmaps", "Rmaps"),
    ("tlb", "TLBs"),
)
DEFAULT_FOCUS = FOCUS_PANELS[0][0]
_ANSWER = re.compile(r"[a-z][a-z0-9-]{0,23}")
_SCORE = re.compile(r"(\d{1,6})-(\d{1,6})")


@dataclass(frozen=True, slots=True)
class Modes:
    """The player's modes as the URL gives them. `score` is the running score *before* the answer in the
    same URL is counted: the answer form holds one score for all its buttons, so it cannot know it."""

    predict: bool = False
    answer: str | None = None
    score: tuple[int, int] = (0, 0)
    present: bool = False
    focus: str = DEFAULT_FOCUS


def parse_modes(
    mode: str | None, answer: str | None, score: str | None, present: str | None, focus: str | None
) -> Modes:
    predict = False
    if mode is not None and mode.strip():
        if mode.strip() != PREDICT_MODE:
            raise bad_request(
                f"mode={mode[:20]!r}: the only mode is {PREDICT_MODE!r}; leave mode= out for the normal"
                " player"
            )
        predict = True
    if not predict:
        for name, value in (("answer", answer), ("score", score)):
            if value is not None:
                raise bad_request(f"{name}= belongs to predict mode: add mode=predict, or leave {name}= out")
    chosen = None
    if answer is not None:
        if not _ANSWER.fullmatch(answer):
            raise bad_request(
                f"answer={answer[:24]!r}: an answer is one choice's key, lowercase letters, digits and"
                " dashes (e.g. answer=fast)"
            )
        chosen = answer
    right = asked = 0
    if score is not None:
        match = _SCORE.fullmatch(score)
        if match is None:
            raise bad_request(
                f"score={score[:20]!r}: expected RIGHT-ASKED, two whole numbers, e.g. score=3-4"
            )
        right, asked = int(match.group(1)), int(match.group(2))
        if right > asked:
            raise bad_request(f"score={score}: more right answers ({right}) than questions asked ({asked})")
    shown = False
    if present is not None:
        if present not in ("0", "1", ""):
            raise bad_request(
                f"present={present[:20]!r}: 1 for presentation mode, 0 (or nothing) for the normal page"
            )
        shown = present == "1"
    panel = DEFAULT_FOCUS
    if focus is not None and focus != "":
        names = [name for name, _ in FOCUS_PANELS]
        if focus not in names:
            raise bad_request(f"focus={focus[:20]!r}: not a panel (panels: {', '.join(names)})")
        panel = focus
    return Modes(predict, chosen, (right, asked), shown, panel)


@dataclass(frozen=True, slots=True)
class PlayerQuery:
    source: Source
    variant: str
    overrides: dict[str, str]
    policy: Policy
    step: int
    notice: str = ""
    selected: Location | None = None
    modes: Modes = field(default_factory=Modes)
    # The root path behind a reverse proxy, in front of every link (app.render.base_path).
    base: str = ""
    links: Links = field(init=False)

    def __post_init__(self) -> None:
        modes = self.modes
        object.__setattr__(
            self,
            "links",
            Links(
                self.source.param,
                self.variant,
                self.overrides,
                self.selected,
                predict=modes.predict,
                score=modes.score,
                present=modes.present,
                focus=modes.focus,
                base=self.base,
            ),
        )

    @property
    def predict(self) -> bool:
        return self.modes.predict

    @property
    def answer(self) -> str | None:
        return self.modes.answer

    @property
    def score(self) -> tuple[int, int]:
        return self.modes.score

    @property
    def present(self) -> bool:
        return self.modes.present

    @property
    def focus(self) -> str:
        return self.modes.focus

    @property
    def total(self) -> int:
        return self.source.total

    @property
    def variant_label(self) -> str:
        return variant_of(self.policy) or "custom"


def query_param(request: Request, name: str) -> str | None:
    """A query parameter given at most once: a URL that says two things is refused, not guessed at."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise bad_request(f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def player_query(request: Request, store: Store) -> PlayerQuery:
    """The query of /play: scenario=NAME|s=CODE, variant, step, policy, spte, and the modes: mode,
    answer, score, present, focus."""
    modes = parse_modes(
        *(query_param(request, name) for name in ("mode", "answer", "score", "present", "focus"))
    )
    source = store.sources.resolve(query_param(request, "scenario"), query_param(request, "s"))
    variant = query_param(request, "variant") or DEFAULT_PRESET
    policy, overrides = resolve_policy(variant, parse_policy_param(query_param(request, "policy") or ""))
    step, notice = parse_step(query_param(request, "step"), source.total)
    selected = None
    spte = query_param(request, "spte")
    if spte:
        try:
            selected = parse_location(spte)
        except ValueError as error:
            raise bad_request(str(error)) from None
    # The summary pass runs to the step shown, one further in predict mode (the question about it).
    upto = min(step + int(modes.predict), source.total)
    check_budget(
        store.settings,
        source.scenario,
        source.work_to(upto),
        steps=upto,
        doing=f"showing step {step} of this scenario",
        earlier=True,
    )
    return PlayerQuery(
        source, variant, overrides, policy, step, notice, selected, modes, base_path(request.scope)
    )


def whatif_overrides(request: Request, variant: str) -> dict[str, str]:
    """The what-if form's `sw.SWITCH=VALUE` fields as overrides (all of them; resolve_policy keeps the
    ones that change the preset)."""
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("sw."):
            out[key.removeprefix("sw.")] = value
    return out


def compare_variants(raw: str | None, default: Sequence[str] = tuple(PRESETS)) -> list[str]:
    """`variants=a,b` (or the API's list joined): known presets, first mention kept, never none;
    `default` when none is asked for."""
    if raw is None or not raw.strip():
        return list(default)
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


@lru_cache(maxsize=SOURCE_QUERY_ENTRIES)
def _source_query(source: tuple[str, str]) -> str:
    """The scenario's part of a link, `s=<code>` or `scenario=<name>`: a share code is kilobytes, and a
    page holds dozens of links to the same scenario, so it is quoted once."""
    return urlencode([source], safe=":,=")


@dataclass(frozen=True, slots=True)
class Links:
    """Every URL of one player state; parameters always in the same order, and the root path (`base`,
    '' unless behind a reverse proxy under a prefix) in front of the path."""

    source: tuple[str, str]
    variant: str
    overrides: Mapping[str, str]
    selected: Location | None
    # The modes, kept by every player link: predict mode with the running score to carry on, and
    # presentation mode with its enlarged panel.
    predict: bool = False
    score: tuple[int, int] = (0, 0)
    present: bool = False
    focus: str = DEFAULT_FOCUS
    base: str = ""

    def url(self, path: str) -> str:
        """A path of the app as the browser must ask for it: with the root path in front."""
        return self.base + path

    @property
    def policy_param(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.overrides.items())

    @property
    def score_param(self) -> str:
        return f"{self.score[0]}-{self.score[1]}"

    def play(
        self, step: int, *, spte: str | None = None, keep_spte: bool = True, answer: str | None = None
    ) -> str:
        """The player at `step`; `answer` (predict mode only) answers the question about step `step - 1`."""
        modes = self.mode_fields(answer)
        tail = "&" + urlencode(modes, safe=":,=") if modes else ""
        return self.base + "/play?" + self._state(step, spte, keep_spte) + tail

    def mode_fields(self, answer: str | None = None) -> list[tuple[str, str]]:
        """The modes' parameters, in their fixed order after the state's: mode, answer, score, present,
        focus (each only when it applies; the default panel is left out)."""
        params: list[tuple[str, str]] = []
        if self.predict:
            params.append(("mode", PREDICT_MODE))
            if answer is not None:
                params.append(("answer", answer))
            params.append(("score", self.score_param))
        if self.present:
            params.append(("present", "1"))
            if self.focus != DEFAULT_FOCUS:
                params.append(("focus", self.focus))
        return params

    def with_score(self, score: tuple[int, int]) -> Links:
        return replace(self, score=score)

    def predicting(self, on: bool) -> Links:
        """Entering predict mode starts the score afresh; leaving it drops the score."""
        return replace(self, predict=on, score=(0, 0))

    def presenting(self, on: bool) -> Links:
        return replace(self, present=on)

    def focused(self, panel: str) -> Links:
        return replace(self, focus=panel)

    def export_svg(self, step: int) -> str:
        """The player's view of `step` as an SVG picture: the player's own query on another path."""
        return self.base + "/export.svg?" + self._state(step, None, True)

    def result(self) -> str:
        """The whole run's result JSON: the scenario and the policy; no step, no spte."""
        params = [("variant", self.variant)]
        if self.overrides:
            params.append(("policy", self.policy_param))
        return self.base + "/result.json?" + _source_query(self.source) + "&" + urlencode(params, safe=":,=")

    def _state(self, step: int, spte: str | None, keep_spte: bool) -> str:
        params = [("variant", self.variant), ("step", str(step))]
        if self.overrides:
            params.append(("policy", self.policy_param))
        if spte is not None:
            params.append(("spte", spte))
        elif keep_spte and self.selected is not None:
            params.append(("spte", location_param(self.selected)))
        return _source_query(self.source) + "&" + urlencode(params, safe=":,=")

    def compare(self, step: int, variants: list[str] | None = None) -> str:
        params = [("variants", ",".join(variants or list(PRESETS))), ("step", str(step))]
        return self.base + "/compare?" + _source_query(self.source) + "&" + urlencode(params, safe=":,=")

    def download(self) -> str:
        return self.base + "/download?" + urlencode([self.source])

    def real(self) -> str:
        """The scenario on this machine's kernel beside every preset. Of the player's what-if switches
        only the dirty-log mode travels: it chooses how the live VM logs, the others are the engine's."""
        mode = self.overrides.get("dirty_log_mode")
        params = [("policy", f"dirty_log_mode={mode}")] if mode else []
        tail = "&" + urlencode(params, safe=":,=") if params else ""
        return self.base + "/real?" + _source_query(self.source) + tail

    def with_variant(self, variant: str) -> Links:
        return replace(self, variant=variant, overrides={})


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
