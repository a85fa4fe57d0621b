"""The page-table tree as HTML, written in Python rather than in a template.

The tree is the biggest panel and is drawn on every step; a template macro per spte cost more than the
rest of the page together. The markup is the contract's and docs/ui-hooks.md's: `data-spte` (or
`data-spte-ghost` for a removed one) with the location, value and flags, `data-large`, `data-changed`,
`data-walk` on the step's address walk, and an `a[data-inspect]` link (a button of the shared
`#inspect-form` when links would be long). Each flag is a chip named by its name (`[data-bit]`): a set one
filled (`<b>`), a clear one outlined and struck (`<s>`), a changed one with its change (`W 1→0`).
Every piece of text goes through `escape`.

Size matters here (hundreds of rows, on every step): the chips' attributes are unquoted where their
values allow it, and a row's accessible name is not repeated in every row but written once per distinct
flag combination in a hidden list at the end of the tree (`aria-labelledby`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from markupsafe import Markup, escape

from app.views.text import bits_label
from app.views.tree import TableView
from app.views.tree_fold import CollapsedView, RunView, SpteView
from engine.spte import FLAG_BITS

# The URL that selects an spte (its `spte=` parameter), or None to use the shared inspect form instead.
InspectLink = Callable[[str], str] | None


# (flag word, old flag word or None, danger, danger bit): the rows' label keys, in first-use order.
LabelKey = tuple[int, int | None, str, str]


def render_tree(tables: list[TableView], link: InspectLink) -> Markup:
    out: list[str] = []
    labels: dict[LabelKey, str] = {}
    for table in tables:
        _table(table, link, out, labels)
    if labels:
        out.append('<div class="bit-labels" hidden>')
        for key, ident in labels.items():
            word, old, danger, _ = key
            out.append(f'<span id="{ident}">{escape(bits_label(word, old, danger))}</span>')
        out.append("</div>\n")
    return Markup("".join(out))  # every text and attribute below is escaped


@lru_cache(maxsize=1024)
def bit_chips(
    word: int, old: int | None = None, danger: str = "", danger_bit: str = "", changed_only: bool = False
) -> str:
    """The eight flags as chips, in the contract's order: `<b>` set, `<s>` clear, each `[data-bit=NAME]`
    with `data-bit-set`, and for a flag that differs from `old` its change (`data-bit-change="0>1"`, text
    `W 0→1`). `danger_bit`'s chip carries `data-bit-danger` (the invariant's name) and a ⚠. The caller
    names the whole (bits_label). `changed_only`: the changed flags alone."""
    changed = 0 if old is None else old ^ word
    parts = []
    for name, bit in FLAG_BITS:
        on = 1 if word & bit else 0
        tag = "b" if on else "s"
        if changed & bit:
            extra = f' data-bit-change="{1 - on}>{on}"'
            text = f"{name} {1 - on}→{on}"
            if name == danger_bit and danger:
                extra += f" data-bit-danger={escape(danger)}"
                text = "⚠" + text
            parts.append(f"<{tag} data-bit={name} data-bit-set={on}{extra}>{text}</{tag}>")
        elif not changed_only:
            parts.append(f"<{tag} data-bit={name} data-bit-set={on}>{name}</{tag}>")
    return "".join(parts)


def changed_bits_html(word: int, old: int) -> Markup:
    """The flags that differ from `old` as chips, e.g. `W 1→0` `D 0→1` (the inspector's history): their
    text says the change, so they need no other name. Empty when no flag changed."""
    chips = bit_chips(word, old, changed_only=True)
    return Markup(f'<span class="bits bit-changes">{chips}</span>') if chips else Markup("")


def _table(t: TableView, link: InspectLink, out: list[str], labels: dict[LabelKey, str]) -> None:
    classes = f"sp sp-l{t.level}"
    attrs = f' data-sp-level="{t.level}" data-sp-gfn="{t.gfn:#x}"'
    if t.orphan:
        classes += " is-orphan"
        attrs += ' data-orphan="1"'
    if t.freed:
        classes += " is-freed"
        attrs += ' data-freed="1"'
    if t.changed:
        classes += " has-changes"
    name = "root table" if t.root else "table"
    out.append(
        f'<div class="{classes}"{attrs}>\n<div class="sp-head"><span class="sp-level">L{t.level}</span>'
        f' <span class="sp-name">{name} · gfns {t.gfn:#x}–{t.last_gfn:#x}</span>'
        f' <span class="sp-summary">{escape(t.summary)}</span>'
    )
    if t.orphan:
        out.append(' <span class="tag tag-warn">⚠ orphaned: no entry points here</span>')
    if t.freed:
        out.append(' <span class="tag tag-gone">✕ freed this step</span>')
    out.append("</div>\n")
    if t.shown:
        out.append('<ul class="entries">\n')
        for item in t.shown:
            if isinstance(item, RunView):
                _run(item, out)
            elif isinstance(item, CollapsedView):
                _collapsed(item, link, out, labels)
            else:
                _entry(item, link, out, labels)
        out.append("</ul>\n")
    out.append("</div>\n")


def _run(item: RunView, out: list[str]) -> None:
    changed = " is-changed" if item.changed else ""
    out.append(
        f'<li class="run{changed}" data-run="{item.first:#x}-{item.last:#x}"><span class="idx">'
        f"[{item.first:#x}–{item.last:#x}]</span> {escape(item.text)}</li>\n"
    )


def _collapsed(c: CollapsedView, link: InspectLink, out: list[str], labels: dict[LabelKey, str]) -> None:
    """Alike entries as one line that opens in place: the entries stay in the page (every hook counts
    them), a closed `<details>` only keeps them from taking room."""
    classes = "collapsed"
    if c.changed:
        classes += " is-changed"
    if c.ghost:
        classes += " is-ghost"
    repeats = f' data-collapsed-repeats="{c.repeats}"' if c.repeats else ""
    out.append(
        f'<li class="{classes}" data-collapsed="{c.count}" data-collapsed-range="{c.first:#x}-{c.last:#x}"'
        f"{repeats}>"
        f'<details><summary><span class="idx">[{c.first:#x}–{c.last:#x}]</span>'
        f' {escape(c.text)}, <span class="target">gfns {c.gfn:#x}–{c.last_gfn:#x}</span></summary>\n'
        '<ul class="entries">\n'
    )
    for row in c.rows:
        if isinstance(row, RunView):
            _run(row, out)
        else:
            _entry(row, link, out, labels)
    if c.rest is not None:
        _run(c.rest, out)
    out.append("</ul></details></li>\n")


def _entry(e: SpteView, link: InspectLink, out: list[str], labels: dict[LabelKey, str]) -> None:
    classes = f"spte k-{e.kind}"
    if e.changed:
        classes += " is-changed"
    if e.ghost:
        classes += " is-ghost"
    if e.selected:
        classes += " is-selected"
    hook = "data-spte-ghost" if e.ghost else "data-spte"
    attrs = e.data_attrs
    if e.walk:
        classes += " on-walk"
        attrs += ' data-walk="1"'
    current = ' aria-current="true"' if e.selected else ""
    if link is None:
        opening = (
            f'<button type="submit" class="spte-link" data-inspect form="inspect-form" name="spte"'
            f' value="{e.param}"{current}>'
        )
        closing = "</button>"
    else:
        opening = f'<a class="spte-link" data-inspect href="{escape(link(e.param))}"{current}>'
        closing = "</a>"
    if e.kind == "large":
        tag = f'<span class="kind-tag large-tag">{e.size} page</span>'
    elif e.kind == "4k":
        tag = '<span class="kind-tag small-tag">4K</span>'
    else:
        tag = f'<span class="kind-tag ptr-tag">→ {e.size}</span>'
    key = (e.word, e.old_word, e.danger, e.danger_bit)
    label = labels.get(key)
    if label is None:
        label = labels[key] = f"bl{len(labels)}"
    walk = '<span class="walk-tag">◆ walk</span> ' if e.walk else ""
    out.append(
        f'<li class="{classes}" {hook}{attrs}>\n{opening}<span class="idx">{walk}[{e.index:#x}]</span> {tag}'
        f' <span class="target">{escape(e.target)}</span> <span class="bits" role="img"'
        f' aria-labelledby={label}>{bit_chips(*key)}</span>'
        f' <code class="raw">{e.value:#x}</code>{closing}\n'
    )
    if e.ghost:
        out.append('<span class="delta delta-gone">✕ removed this step</span>\n')
    elif e.changed:
        if not e.old:
            out.append('<span class="delta">★ new</span>\n')
        else:
            was = f" ({e.old_kind})" if e.old_kind else ""
            out.append(f'<span class="delta">★ was <code>{e.old:#x}</code>{was}</span>\n')
    if e.warning:
        out.append(f'<p class="spte-warning"><span aria-hidden="true">⚠</span> {escape(e.warning)}</p>\n')
    if e.child is not None:
        _table(e.child, link, out, labels)
    elif e.child_note:
        out.append(f'<p class="below">{escape(e.child_note)}</p>\n')
    out.append("</li>\n")
