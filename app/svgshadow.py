"""The exported SVG's picture of shadow paging (app.svgexport draws it instead of the TDP tree when the
guest pages): the step's walk, the guest's tables of the vCPU's CR3, the shadow tables under its root,
and the write-protected and unsync gfns, from the player's own `ShadowView`, with its hooks
(`data-guest-table`, `data-gpte`, `data-shadow-table`, `data-shadow-spte`) on the groups.
"""

from __future__ import annotations

from app.svgcanvas import (
    BAD,
    CHANGED_FILL,
    CHAR,
    COL_BITS,
    COL_DELTA,
    COL_INDEX,
    COL_KIND,
    COL_RAW,
    COL_TARGET,
    GHOST,
    INK,
    LEAF_4K,
    LEAF_LARGE,
    LINE,
    MARGIN,
    MAX_TREE_LINES,
    MUTED,
    POINTER,
    TABLE_HEAD,
    WIDTH,
    Canvas,
    col,
    fit,
    x_at,
)
from app.views.guest_tables import FoldedRun, GuestEntry, GuestTable
from app.views.shadow import ShadowEntry, ShadowTable, ShadowView
from app.views.text import bits_text, hx


def _folded(c: Canvas, r: FoldedRun, depth: int, hook: str) -> None:
    x = x_at(depth)
    if r.changed:
        c.box(x, LEAF_4K, fill=CHANGED_FILL)
    c.add(f'<g {hook}="{r.first:#x}-{r.last:#x}">')
    c.text(
        x + 4,
        [
            ("★" if r.changed else "", ""),
            (f"[{r.first:#x}–{r.last:#x}]", col(x + 4, COL_INDEX)),
            (fit(r.text, int((WIDTH - MARGIN - x) / CHAR) - 16), col(x + 4, 16)),
        ],
        attrs=f' fill="{INK if r.changed else MUTED}"',
    )
    c.add("</g>")
    c.y += LINE
    c.tree_lines += 1


def _shadow_head(c: Canvas, x: float, hooks: str, head: str, tail: str) -> None:
    c.add(f"<g{hooks}>")
    c.box(x, TABLE_HEAD)
    c.text(x + 4, [(head, ' font-weight="bold"'), (tail, "")])
    c.y += LINE
    c.tree_lines += 1


def _more(c: Canvas, depth: int, rest: int) -> bool:
    if c.tree_lines < MAX_TREE_LINES:
        return False
    text = f"… {rest} more lines of this table not drawn: open the share link"
    c.line(x_at(depth), text, attrs=f' fill="{MUTED}"')
    return True


def _guest_table(c: Canvas, t: GuestTable, depth: int) -> None:
    x = x_at(depth)
    mark = {"protected": " · shadowed, write-protected", "unsync": " · shadowed, unsync"}.get(t.mark, "")
    hooks = f' data-guest-table="{t.gfn:#x}"' + (f' data-shadowed="{t.mark}"' if t.mark else "")
    _shadow_head(c, x, hooks, f"{t.name} gfn {t.gfn:#x}", f" · {t.present} present{mark}")
    for position, item in enumerate(t.items):
        if _more(c, depth + 1, len(t.items) - position):
            break
        if isinstance(item, FoldedRun):
            _folded(c, item, depth + 1, "data-guest-run")
            continue
        _guest_entry(c, item, depth + 1, t.gfn)
    c.add("</g>")


def _guest_entry(c: Canvas, e: GuestEntry, depth: int, table: int) -> None:
    x = x_at(depth)
    c.add(f'<g data-gpte="{e.level}:{table:#x}:{e.index:#x}">')
    box = (LEAF_LARGE if e.level > 1 else LEAF_4K) if e.leaf else POINTER
    c.box(x, box, fill=CHANGED_FILL if e.changed else None)
    if e.leaf:
        kind = f"▣ {e.size} page" if e.level > 1 else "4K"
        target = f"gva {e.gva:#x} → gfn {e.target:#x}"
    else:
        kind, target = "→ table", f"gfn {e.target:#x}"
    bits = " ".join(name if on else "·" for name, on in e.bits)
    c.text(
        x + 4,
        [
            ("★" if e.changed else "◆" if e.walk else "", ' font-weight="bold"'),
            (f"[{e.index:#x}]", col(x + 4, COL_INDEX)),
            (kind, col(x + 4, COL_KIND)),
            (target, col(x + 4, COL_TARGET)),
            (bits, col(x + 4, COL_BITS)),
            (f"{e.pte:#x}", col(x + 4, COL_RAW)),
            ("★ written this step" if e.changed else "", col(x + 4, COL_DELTA) + ' font-weight="bold"'),
        ],
    )
    c.y += LINE
    c.tree_lines += 1
    c.add("</g>")
    if e.child is not None:
        _guest_table(c, e.child, depth + 1)
    elif e.child_note:
        c.line(x_at(depth + 1), e.child_note, attrs=f' fill="{MUTED}"')
        c.tree_lines += 1


def _shadow_table(c: Canvas, t: ShadowTable, depth: int) -> None:
    x = x_at(depth)
    tail = f" · {t.present} present" + (" · unsync" if t.unsync else "")
    hooks = f' data-shadow-table="{t.level}:{t.gfn:#x}"'
    _shadow_head(c, x, hooks, f"L{t.level} {'root · ' if t.root else ''}{t.label}", tail)
    for position, item in enumerate(t.items):
        if _more(c, depth + 1, len(t.items) - position):
            break
        if isinstance(item, FoldedRun):
            _folded(c, item, depth + 1, "data-shadow-run")
            continue
        _shadow_entry(c, item, depth + 1, t.gfn)
    c.add("</g>")


def _shadow_entry(c: Canvas, e: ShadowEntry, depth: int, table: int) -> None:
    x = x_at(depth)
    extra = ' data-large="1"' if e.kind == "large" else ""
    extra += ' data-changed="1"' if e.changed and not e.ghost else ""
    c.add(f'<g data-shadow-spte="{e.level}:{table:#x}:{e.index:#x}"{extra}>')
    box = GHOST if e.ghost else {"large": LEAF_LARGE, "4k": LEAF_4K}.get(e.kind, POINTER)
    c.box(x, box, fill=CHANGED_FILL if e.changed and not e.ghost else None)
    if e.ghost:
        mark, delta = "✕", "✕ removed this step"
    elif e.changed:
        mark, delta = "★", "★ new" if not e.old else f"★ was {e.old:#x}"
    else:
        mark, delta = ("◆" if e.walk else ""), ""
    kind = {"large": f"▣ {e.size} page", "4k": "4K"}.get(e.kind, f"→ L{e.level - 1}")
    bits = bits_text(e.word) + (" U" if e.user else " ·")
    c.text(
        x + 4,
        [
            (mark, ' font-weight="bold"'),
            (f"[{e.index:#x}]", col(x + 4, COL_INDEX)),
            (kind, col(x + 4, COL_KIND)),
            (fit(e.target, COL_BITS - COL_TARGET - 1), col(x + 4, COL_TARGET)),
            (bits, col(x + 4, COL_BITS)),
            (f"{e.spte:#x}", col(x + 4, COL_RAW)),
            (delta, col(x + 4, COL_DELTA) + ' font-weight="bold"'),
        ],
        attrs=f' fill="{MUTED}"' if e.ghost else "",
    )
    c.y += LINE
    c.tree_lines += 1
    c.add("</g>")
    if e.child is not None:
        _shadow_table(c, e.child, depth + 1)
    elif e.child_note:
        c.line(x_at(depth + 1), e.child_note, attrs=f' fill="{MUTED}"')
        c.tree_lines += 1


def draw_shadow(c: Canvas, sv: ShadowView) -> None:
    """The step's walk, the guest's tables, the shadow tables and the shadowed gfns, one line each."""
    bold = ' font-weight="bold"'
    w = sv.walk
    if w is not None:
        hops = " → ".join(f"{h.name} {h.table_gfn:#x}[{h.index:#x}]" for h in w.hops)
        reached = f" → gfn {w.gfn:#x}" if w.gfn is not None else ""
        reached += f" → pfn {w.pfn:#x}" if w.pfn is not None else ""
        c.add(f'<g data-walk-strip="" data-walk-gva="{w.gva:#x}">')
        c.line(x_at(0), f"◆ {w.what} at gva {w.gva:#x}: {hops}{reached}", attrs=bold)
        if w.fault:
            c.line(x_at(1), f"⚠ {w.fault}", attrs=f' fill="{BAD}"')
        c.line(x_at(1), f"shadow spte: {w.spte_text}")
        c.add("</g>")
    c.line(x_at(0), f"Guest page tables of vCPU {sv.vcpu} (CR3 {sv.cr3:#x})", size=14, attrs=bold)
    if sv.guest is not None:
        _guest_table(c, sv.guest, 0)
    c.gap()
    c.line(x_at(0), f"Shadow page tables under vCPU {sv.vcpu}'s root", size=14, attrs=bold)
    if sv.shadow is not None:
        _shadow_table(c, sv.shadow, 0)
    else:
        text = "No root: the vCPU loads one when it next enters the guest."
        c.line(x_at(0), text, attrs=f' fill="{MUTED}"')
    protected = " ".join(hx(g) for g in sv.protected) or "none"
    unsync = " ".join(hx(g) for g in sv.unsync) or "none"
    c.line(x_at(0), f"Write-protected guest tables: {protected} · unsync: {unsync}")
