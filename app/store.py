"""The store: every cache of the app, and the only way routes reach the engine's runs.

`Store` holds the resolved scenarios, the runs (app.cache.RunCache), the built views, the timeline
strips, predict mode's questions and the rendered pages, all under one byte budget
(app.budget_bytes.ByteBudget); routes get it as a FastAPI dependency (`StoreDep`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from app.budget_bytes import ByteBudget, Lru, weigh_any
from app.cache import RunCache
from app.errors import bad_request
from app.predict import PredictPanel, Question, judge, predict_panel, question_for
from app.query import PlayerQuery
from app.records import StepRecord
from app.render import first_sentence
from app.replay import Shown
from app.settings import Settings, get_settings
from app.sources import Source, SourceCache
from app.views.inspector import InspectorView, inspector_view
from app.views.library import ScenarioCard, scenario_card
from app.views.play import PlayView, play_view
from app.views.text import Location
from app.views.timeline import TimelineView, timeline_view
from app.views.tree import TreeBuilder, TreeView
from engine.ops.registry import describe, op_spec
from engine.policy import PRESETS, Policy, variant_of
from scenarios import builtin_names

_T = TypeVar("_T")

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
        # Rendered pages and partials by canonical key (app.build.page_key): (body, headers).
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

    def read_state(self, source: Source, policy: Policy, step: int, read: Callable[[Shown], _T]) -> _T:
        """`read` applied to the run's state after `step` steps (its cursor, parked again after): what
        the kernel's tables are set beside, without running the engine again from the start."""
        run = self.runs.get(source.code, source.scenario, policy)
        shown = run.at(step)
        try:
            return read(shown)
        finally:
            run.park(shown)
            self.runs.trim()

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
