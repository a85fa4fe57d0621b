"""What the page templates receive: the player's and the compare view's contexts, built from a checked
query (app.query) and the views the store built (app.store), with every link from app.links."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

from fastapi import Request
from markupsafe import Markup

from app.announce import compare_announcement, play_announcement
from app.forwarded import public_origin
from app.kernel_panel import kernel_panel
from app.links import Links
from app.livekernel import kernel_unavailable
from app.modes import FOCUS_PANELS
from app.predict import PredictPanel
from app.query import PlayerQuery
from app.render import base_path, markdown
from app.sources import Source, scenario_from_code, share_code
from app.store import LaneRun, get_store
from app.treehtml import InspectLink, bit_chips, render_tree
from app.views.compare import COMPARE_FIELDS, compare_columns, field_splits
from app.views.inspector import InspectorView
from app.views.narration import lesson_text
from app.views.play import PlayView
from app.views.presets import preset_description
from app.views.shadow import PagingOffView, ShadowView
from app.views.text import bits_label, location_param
from app.views.tree import TreeView
from engine.policy import NOT_IMPLEMENTED, PRESET_DESCRIPTIONS, PRESETS, SWITCH_VALUES, Policy
from engine.scenario import Scenario, ScenarioError, under_mmu
from live.backend import refusal as live_refusal

PLAY_BLOCKS = (
    "position",
    "stepnav",
    "scrubber",
    "share",
    "modes",
    "timeline",
    "narration",
    "tree",
    "kernel",
    "inspector",
    "bitmap",
    "counters",
    "violations",
    "trace",
    "rmaps",
    "tlb",
)
# Not swapped when stepping: the preset picker, the what-if form and the shared forms of long links
# differ from step to step only in their hidden `step` and `spte` fields, which keys.js keeps in line
# with the address bar (forms marked data-sync).
COMPARE_BLOCKS = ("position", "stepnav", "scrubber", "share", "timeline", "compare_grid")

# A player URL longer than this makes the panels link through shared forms instead of per-link URLs.
COMPACT_LINKS_OVER = 256

SWITCH_HELP: dict[str, str] = {
    "wp_large": "what write protection does to a writable large spte: zap it (3.14) or clear W",
    "fast_pf_level_guard": "which sptes the lockless fast path refuses to make writable (the patch's guard)",
    "last_spte_check": "the level fast_page_fault's is_last_spte() asks about",
    "flush_rule": "when mmu_spte_update asks for a TLB flush: W was set, or HW and MW were",
    "flush_after_unlock": "flush after dropping mmu_lock when write-protecting (198c74f4, 3.16)",
    "direct_map_drops_large": "__direct_map drops a large spte met on the way down (404381c5)",
    "split_on_fault": "what a fault does with a large spte under logging",
    "eager_split": "split large pages when logging starts",
    "recover_on_disable": "rebuild large pages when logging stops",
    "read_fault_marks_dirty": "whether a read fault maps writable and marks the page dirty",
    "dirty_log_mode": "how userspace collects dirty pages",
    "pml": "Intel page-modification logging",
}


@dataclass(frozen=True, slots=True)
class Downloads:
    """The share block's download links (its `downloads` argument): the scenario file always; in the
    player also this step as an SVG picture and the run's result JSON, which follow the step."""

    scenario: str
    export_svg: str = ""
    result: str = ""


def absolute(request: Request, path: str) -> str:
    """The full URL of `path`, an app URL as Links writes it (the root path already in front), from the
    public origin (app/forwarded.py); the path alone when none is configured or forwarded, never from the
    request's Host header."""
    return public_origin(request.scope) + path


def slug(title: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return text[:60] or "scenario"


# ---------------------------------------------------------------------------------------------------------
# The player


@lru_cache(maxsize=64)
def _switches(policy: Policy, variant: str) -> list[dict[str, Any]]:
    """The what-if panel's rows (read-only to the templates): the same for every step of a run."""
    current = policy.as_json()
    preset = PRESETS[variant].as_json() if variant in PRESETS else current
    rows = []
    for name, values in SWITCH_VALUES.items():
        options = []
        for value in values:
            text = str(value).lower()
            note = NOT_IMPLEMENTED.get((name, value))
            options.append(
                {
                    "value": text,
                    "selected": str(current[name]).lower() == text,
                    "disabled": note is not None,
                    "note": f"not modelled yet: {note}" if note else "",
                }
            )
        rows.append(
            {
                "name": name,
                "help": SWITCH_HELP.get(name, ""),
                "options": options,
                "changed": current[name] != preset[name],
                "unmodelled": [o for o in options if o["disabled"]],
            }
        )
    return rows


def play_context(
    request: Request,
    query: PlayerQuery,
    view: PlayView,
    inspector: InspectorView | None,
    predict: PredictPanel | None = None,
) -> dict[str, Any]:
    # The links to other states carry the score with this page's answer counted; this page's own URL
    # keeps the answer and the score before it.
    links = query.links if predict is None else query.links.with_score(predict.score)
    here = query.links.play(query.step, answer=query.answer)
    step_url: Callable[[int], str] = links.play
    scenario = query.source.scenario
    # Whether the share code is long, whatever the modes add.
    compact = len(links.predicting(False).presenting(False).play(query.total)) > COMPACT_LINKS_OVER
    tree = view.tree
    inspect: InspectLink = None if compact else (lambda param: links.play(query.step, spte=param))
    return {
        "page": "play",
        "q": query,
        "view": view,
        "inspector": inspector,
        "links": links,
        "step": query.step,
        "total": query.total,
        "step_url": step_url,
        "notice": query.notice,
        "title": scenario.title or query.source.name or "Untitled scenario",
        "description": markdown(scenario.description),
        # Before the first step the narration panel shows what the lesson is (and what to watch).
        "lesson": markdown(lesson_text(scenario.description, scenario.steps)) if query.step == 0 else None,
        "variant": query.variant,
        "variant_label": query.variant_label,
        "variant_description": preset_description(query.variant_label),
        "overrides": query.overrides,
        "presets": [(name, PRESET_DESCRIPTIONS.get(name, "")) for name in PRESETS],
        "switches": _switches(query.policy, query.variant),
        "share_url": absolute(request, here),
        "downloads": Downloads(links.download(), links.export_svg(query.step), links.result()),
        "compare_url": links.compare(query.step),
        **_real_context(request, query, links),
        "kernel_panel": kernel_panel(request, query, links),
        "live_on": query.live,
        "source_param": query.source.param,
        # Long share codes: links inside the panels become buttons of two shared forms (see controls.html).
        "compact": compact,
        # The step's outcome for the page's live region (app/announce.py).
        "announce": play_announcement(query.step, query.total, view, predict),
        "tree_html": (
            render_tree([tree.root, *tree.orphans, *tree.freed], inspect) + _freed_note(tree.freed_hidden)
        ),
        **_mode_context(query, links, predict),
        **_player_timeline(request, query),
        **_shadow_context(view),
        **mmu_twin(query.source, links, query.step),
        "paging_guest": _paging_guest(scenario),
        # The shadow panel's sptes open the inspector as the tree's do (a link, or the shared form).
        "shadow_inspect": inspect,
        "shadow_compact": compact,
        "selected_spte": location_param(query.selected) if query.selected is not None else "",
    }


def _chips(word: int, old: int | None = None) -> Markup:
    return Markup(bit_chips(word, old))


def _paging_guest(scenario: Scenario) -> bool:
    """Shadow paging of a guest with paging on: no fault of it takes the fast path."""
    return scenario.vm.mmu == "shadow" and (scenario.guest is None or scenario.guest.paging)


@lru_cache(maxsize=64)
def _twin_code(code: str) -> tuple[str, str] | None:
    """The share code of the scenario of `code` under the other MMU, and that MMU's name; None when it
    cannot run there (no guest tables for shadow paging, a guest paging op under TDP)."""
    scenario = scenario_from_code(code)
    if scenario.guest is None:
        return None
    other: Literal["tdp", "shadow"] = "shadow" if scenario.vm.mmu == "tdp" else "tdp"
    try:
        return share_code(under_mmu(scenario, other)), other
    except ScenarioError:
        return None


def mmu_twin(source: Source, links: Links, step: int, variants: list[str] | None = None) -> dict[str, str]:
    """The link to the same accesses under the other MMU, at the same step (the player, or the comparison
    of the same presets): a scenario that carries the guest's tables runs under both, side by side in two
    tabs. Empty when it cannot."""
    twin = _twin_code(share_code(source.scenario))
    if twin is None:
        return {}
    code, other = twin
    moved = replace(links, source=("s", code), selected=None)
    url = moved.compare(step, variants) if variants is not None else moved.play(step)
    label = "Under shadow paging" if other == "shadow" else "Under TDP (EPT)"
    return {"mmu_twin_url": url, "mmu_twin_label": label, "mmu_twin": other}


def _shadow_context(view: PlayView) -> dict[str, Any]:
    """Shadow paging: which panel draws the tables ("paging": the guest's and the shadow tables; "off":
    the TDP tree, for a guest with paging off; "" under TDP), the inert switches with their reasons, and
    the chip helpers the shadow panel shares with the tree."""
    shadow = view.shadow
    if isinstance(shadow, ShadowView):
        mode, inert = "paging", dict(shadow.inert)
    elif isinstance(shadow, PagingOffView):
        mode, inert = "off", dict(shadow.inert)
    else:
        mode, inert = "", {}
    return {"shadow_mode": mode, "inert": inert, "chips": _chips, "bits_label": bits_label}


def _player_timeline(request: Request, query: PlayerQuery) -> dict[str, Any]:
    """The player's timeline: a lane for every preset the compare view shows, the player's own preset
    run with its what-if switches and marked as this player's."""
    own = "this player" + (", + what-if" if query.overrides else "")
    lanes = [
        LaneRun(name, policy, own=False)
        if name != query.variant
        else LaneRun(name, query.policy, own=True, note=own)
        for name, policy in PRESETS.items()
    ]
    # Predict mode asks about the next step: the strip shows no step after the one shown.
    timeline = get_store(request).timeline(query.source, lanes, query.step, hide_ahead=query.predict)
    return {"timeline": timeline, "timeline_form": None}


def _freed_note(hidden: int) -> Markup:
    if not hidden:
        return Markup("")
    return Markup(
        f'<p class="muted tree-more" data-freed-hidden="{hidden}">… and {hidden} more'
        f" table{'s' if hidden != 1 else ''} freed this step</p>"
    )


def _real_context(request: Request, query: PlayerQuery, links: Links) -> dict[str, Any]:
    """The "run on this machine's kernel" button: absent in workshop mode (app/workshop.py) and where the
    server cannot open /dev/kvm, shown
    disabled, with the reason, for a scenario the live backend cannot express."""
    settings = request.app.state.settings
    if settings.workshop or kernel_unavailable(settings) is not None:
        return {"real_url": None, "real_refusal": None}
    mode = str(query.policy.dirty_log_mode)
    return {"real_url": links.real(), "real_refusal": live_refusal(query.source.scenario, mode)}


# Shown in presentation mode whatever panel is picked: a writable 2M spte and the pages it loses are on
# screen together.
PRESENT_ALWAYS = frozenset({"tree", "bitmap"})


def _focus_attr(present: bool, focus: str, selected: bool) -> Callable[[str], Markup]:
    """A panel's presentation-mode attributes: `data-focused` on the picked one; `data-shown` on every
    panel on screen (the picked one, the tree, the bitmap, and the inspector once an spte is selected,
    so that clicking an spte shows it), with tabindex=0 because such a panel may scroll inside itself."""

    def attr(panel: str) -> Markup:
        if not present:
            return Markup("")
        out = ' data-focused="1"' if panel == focus else ""
        if panel == focus or panel in PRESENT_ALWAYS or (panel == "inspector" and selected):
            out += ' data-shown="1" tabindex="0"'
        return Markup(out)

    return attr


def _mode_context(query: PlayerQuery, links: Links, predict: PredictPanel | None) -> dict[str, Any]:
    """Predict mode's panel and links, presentation mode's panel picker, and the toolbar's switches."""
    step = query.step
    same = query.links  # this very state, answer included, with one mode changed
    # How far the step buttons may go: in predict mode not past a question waiting for its answer, and
    # never to the end in one jump (that would skip every question on the way).
    stop = query.total
    if predict is not None:
        stop = step if predict.waiting or predict.finished else step + 1
    return {
        "predict": predict,
        "present": query.present,
        "focus": query.focus,
        "focused": _focus_attr(query.present, query.focus, query.selected is not None),
        "nav_stop": stop,
        "mode_fields": links.mode_fields(),
        "score_next": links.score_param if predict is not None else "",
        "predict_urls": {
            "enter": same.predicting(True).play(step),
            "leave": links.predicting(False).play(step),
            "again": links.predicting(True).play(0),
            "next": links.play(step + 1),
            # The answer form's action.
            "action": links.url("/play"),
        },
        # The answer form: this state one step on, every parameter but the answer its buttons give.
        "answer_fields": [query.source.param, *_state_fields(links, step + 1), *links.mode_fields()],
        "present_url": same.presenting(not query.present).play(step, answer=query.answer),
        "focus_links": [
            {
                "name": name,
                "label": label,
                "key": str(number),
                "url": same.focused(name).play(step, answer=query.answer),
                "current": name == query.focus,
            }
            for number, (name, label) in enumerate(FOCUS_PANELS, start=1)
        ],
    }


def _state_fields(links: Links, step: int) -> list[tuple[str, str]]:
    fields = [("variant", links.variant), ("step", str(step))]
    if links.overrides:
        fields.append(("policy", links.policy_param))
    if links.selected is not None:
        fields.append(("spte", location_param(links.selected)))
    return fields


# ---------------------------------------------------------------------------------------------------------
# The compare view


def compare_context(
    request: Request,
    source: Source,
    variants: list[str],
    step: int,
    notice: str,
    views: Mapping[str, PlayView],
    column_trees: Mapping[str, TreeView],
) -> dict[str, Any]:
    base = base_path(request.scope)
    links = Links(source.param, variants[0], {}, None, base=base)

    def step_url(n: int) -> str:
        return links.compare(n, variants)

    any_view = next(iter(views.values()))
    splits = field_splits(views)
    columns = compare_columns(views, splits)
    scenario = source.scenario
    store = get_store(request)
    # Long share codes: the timeline's markers become buttons of one shared form (as in the player).
    compact = len(links.compare(source.total, variants)) > COMPACT_LINKS_OVER
    # The page runs every preset to the step shown: the strip may read that far for free.
    timeline = store.timeline(source, [LaneRun(name, PRESETS[name]) for name in variants], step, paid=True)
    trees = {name: _compare_tree(column_trees[name], links, name, step, compact) for name in variants}
    return {
        "page": "compare",
        "links": links,
        "variants": variants,
        "step": step,
        "total": source.total,
        "step_url": step_url,
        "notice": notice,
        "title": scenario.title or source.name or "Untitled scenario",
        "view": any_view,
        "columns": columns,
        "splits": splits,
        "announce": compare_announcement(step, source.total, any_view, splits),
        "fields": COMPARE_FIELDS,
        "trees": trees,
        "chips": _chips,
        "bits_label": bits_label,
        "timeline": timeline,
        "compact": compact,
        "timeline_form": (
            {"action": links.url("/compare"), "fields": [source.param, ("variants", ",".join(variants))]}
            if compact
            else None
        ),
        "play_urls": {v: Links(source.param, v, {}, None, base=base).play(step) for v in variants},
        "share_url": absolute(request, links.compare(step, variants)),
        "downloads": Downloads(links.download()),
        "source_param": source.param,
        "variants_param": ",".join(variants),
        **mmu_twin(source, links, step, variants),
        "paging_guest": _paging_guest(source.scenario),
    }


def _compare_tree(tree: TreeView, links: Links, variant: str, step: int, compact: bool) -> Markup:
    """A column's tree, its sptes opening the player of that preset at this step with the spte
    selected; with a long share code, buttons of the column's own inspect form (compare.html)."""
    player = links.with_variant(variant)
    inspect: InspectLink = None if compact else (lambda param: player.play(step, spte=param))
    html = render_tree([tree.root, *tree.orphans, *tree.freed], inspect) + _freed_note(tree.freed_hidden)
    if compact:
        # render_tree names the player's one shared form; each column has its own (its preset).
        html = Markup(str(html).replace('form="inspect-form"', f'form="inspect-form-{variant}"'))
    return html
