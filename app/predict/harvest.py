"""Harvests: GET_DIRTY_LOG, a migration round or the ring's reset ("will it report gfn G?"),
KVM_CLEAR_DIRTY_LOG ("will it write-protect gfn G again?"), and the end of a migration ("will a page be
lost?")."""

from __future__ import annotations

from collections.abc import Sequence

from app.explain.meanings import INVARIANT_TEXT
from app.predict.base import (
    _SCAN_REPORTED,
    CLEAR,
    DIRTY_LOG,
    VERDICT,
    Choice,
    Leaf,
    Question,
    _hx,
    _join,
    _pick,
    _sentences,
    leaf_before,
)
from app.replay import Shown
from engine.kvm import Kvm
from engine.ops.base import Harvest
from engine.ops.registry import Step, op_spec
from engine.simulation import StepResult
from engine.spte import is_writable_pte

_REPORT = (Choice("yes", "Yes, it is reported"), Choice("no", "No, it is not reported"))
_ANY = (Choice("yes", "Yes, some page"), Choice("no", "No, nothing"))
_VERDICT = (
    Choice("no", "No: the destination matches the source"),
    Choice("yes", "Yes: some pages are stale on the destination"),
)


def first_write_since(
    steps: Sequence[Step], index: int, gfn: int, slot: int, mode: str = "bitmap", base_gfn: int = 0
) -> int | None:
    """The earliest step since `gfn`'s dirty bit was last cleared in `slot` (each op's `restarts_page`
    facet: GET_DIRTY_LOG in plain bitmap mode; CLEAR_DIRTY_LOG of a range holding it in any bitmap mode,
    since with manual protection GET only copies; the ring's reset; a migration round; logging switched)
    before step `index` that stores to `gfn`, read from the scenario's ops: the learner's "written at
    #k"."""
    found = None
    for k in range(index - 1, -1, -1):
        step = steps[k]
        spec = op_spec(step)
        if spec.restarts_page(step, mode, slot, gfn - base_gfn):
            break
        access = spec.access(step)
        if access is not None and access.write:
            offset = gfn - access.gfn
            if access.stride == 0:
                hit = offset == 0
            else:
                hit = offset >= 0 and offset % access.stride == 0 and offset // access.stride < access.count
            if hit:
                found = k
    return found


def _harvest_head(step: Step, mode: str) -> str:
    """What the harvesting step does, in the VM's dirty-log mode: the question's first sentence."""
    spec = op_spec(step)
    if spec.harvest is Harvest.GET:
        return f"KVM_GET_DIRTY_LOG runs on slot {spec.slot(step)}."
    if spec.harvest is Harvest.RING:
        return (
            "Userspace harvests every vCPU's dirty ring, then KVM_RESET_DIRTY_RINGS re-protects what it"
            " harvested."
        )
    if mode == "ring":
        return (
            "A pre-copy round: every vCPU's dirty ring is harvested and reset; what it reports is copied"
            " again."
        )
    if mode != "bitmap":
        return (
            "A pre-copy round: KVM_GET_DIRTY_LOG on every logged slot, then KVM_CLEAR_DIRTY_LOG of what it"
            " returned; what it reports is copied again."
        )
    return "A pre-copy round: KVM_GET_DIRTY_LOG on every logged slot; what it reports is copied again."


def _reported_text(step: Step, mode: str, gfn: int) -> str:
    """Why a reported page is reported, and what becomes of its bit, in the VM's dirty-log mode."""
    page = f"gfn {_hx(gfn)}"
    harvest = op_spec(step).harvest
    if harvest is Harvest.RING or mode == "ring":
        return (
            f"Yes: the fault that marked {page} dirty pushed it to its vCPU's dirty ring; the harvest"
            " collects it, and the reset re-protects the page."
        )
    if mode == "bitmap":
        return f"Yes: {page}'s dirty bit is set, so the ioctl returns it and clears the bit."
    if harvest is Harvest.GET:
        return (
            f"Yes: {page}'s dirty bit is set, so the ioctl reports it. With manual protection it only copies"
            " the bitmap: the bit stays set, and the page writable, until KVM_CLEAR_DIRTY_LOG."
        )
    return (
        f"Yes: {page}'s dirty bit is set, so GET reports it, and the round's KVM_CLEAR_DIRTY_LOG clears"
        " the bit and re-protects the page before it is copied."
    )


def _failed(shown: Shown, result: StepResult, head: str) -> Question:
    """A harvesting ioctl the VM's dirty-log mode refuses: asked as if it ran, about the lowest page the
    guest wrote since bits were last cleared (from the ops, as a harvest that reports it would be asked
    about), and answered "no" by the failure."""
    sim = shown.sim
    steps = sim.scenario.steps
    mode = sim.policy.dirty_log_mode
    written: dict[int, int] = {}
    for k in range(result.index - 1, -1, -1):
        step = steps[k]
        spec = op_spec(step)
        if spec.clears_some(step, mode):
            break
        access = spec.access(step)
        if access is not None and access.write and sim.kvm.gfn_to_memslot(access.gfn) is not None:
            written[access.gfn] = k
    said = _pick(_sentences(result, shown.sim.kvm.masks), ("kvm_vm_ioctl",))
    failed = f"No: the ioctl fails ({result.error}) and does nothing."
    if not written:
        prompt = f"{head} Will it report any page at all?"
        return Question(result.index, DIRTY_LOG, prompt, _ANY, "no", _join(failed, said))
    gfn = min(written)
    prompt = f"{head} Will it report gfn {_hx(gfn)}, which the guest wrote at step #{written[gfn] + 1}?"
    return Question(result.index, DIRTY_LOG, prompt, _REPORT, "no", _join(failed, said))


def dirty_log_question(shown: Shown, result: StepResult) -> Question:
    """Will this GET_DIRTY_LOG (or round, or ring harvest) report gfn G? G is a page written since the
    last harvest that the log misses when there is one (the lost write), else a written page it reports,
    else any page it reports; with nothing written or reported it asks whether the log is empty."""
    sim = shown.sim
    steps = sim.scenario.steps
    mode = sim.policy.dirty_log_mode
    head = _harvest_head(result.op, mode)
    if result.error is not None:
        return _failed(shown, result, head)
    reported = list(result.dirty_log or [])
    lost = sorted(
        {v.gfn for v in result.violations if v.invariant == "written_not_logged" and v.gfn is not None}
    )
    listed = ", ".join(_hx(g) for g in reported[:12]) + (" …" if len(reported) > 12 else "")
    returns = f"The log returns {listed}." if reported else "The log returns nothing."
    said = _pick(
        _sentences(result, shown.sim.kvm.masks), ("kvm_vm_ioctl_get_dirty_log", "dirty_ring_harvest")
    )

    def written(gfn: int) -> int | None:
        slot = sim.kvm.gfn_to_memslot(gfn)
        if slot is None:
            return None
        return first_write_since(steps, result.index, gfn, slot.id, mode, slot.base_gfn)

    target: int | None = None
    if lost:
        target = lost[0]
    else:
        for gfn in reported[:_SCAN_REPORTED]:
            if written(gfn) is not None:
                target = gfn
                break
        if target is None and reported:
            target = reported[0]
    if target is None:
        prompt = f"{head} Will it report any page at all?"
        from_rings = mode == "ring" or op_spec(result.op).harvest is Harvest.RING
        nothing = (
            "No: no vCPU pushed an entry to its dirty ring, so the harvest finds nothing."
            if from_rings
            else "No: no dirty bit is set, so the ioctl returns nothing (and flushes no TLB)."
        )
        return Question(result.index, DIRTY_LOG, prompt, _ANY, "no", _join(nothing, said))
    when = written(target)
    wrote = f", which the guest wrote at step #{when + 1}" if when is not None else ""
    prompt = f"{head} Will it report gfn {_hx(target)}{wrote}?"
    if target in reported:
        explanation = _join(_reported_text(result.op, mode, target), said or returns)
        return Question(result.index, DIRTY_LOG, prompt, _REPORT, "yes", explanation)
    explanation = _join(
        f"No: gfn {_hx(target)} was written{f' at step #{when + 1}' if when is not None else ''} while"
        " the slot was logged, but nothing set its dirty bit.",
        INVARIANT_TEXT["written_not_logged"],
        returns,
    )
    return Question(result.index, DIRTY_LOG, prompt, _REPORT, "no", explanation)


_PROTECT = (
    Choice("yes", "Yes: it loses W, so the next write faults and is logged"),
    Choice("no", "No: it stays writable"),
)
_PROTECT_ANY = (Choice("yes", "Yes, some page"), Choice("no", "No, none"))


def _writable_after(kvm: Kvm, gfn: int) -> bool:
    leaf = leaf_before(kvm, {}, gfn)
    return leaf is not None and is_writable_pte(leaf.old)


def clear_question(shown: Shown, result: StepResult) -> Question:
    """Will this KVM_CLEAR_DIRTY_LOG write-protect gfn G again? G is the first page of the range (among
    its first pages) that the state before maps writable, which the page shows; with none, whether it
    write-protects anything. The answer is read off the sptes after the step."""
    kvm = shown.sim.kvm
    mode = shown.sim.policy.dirty_log_mode
    spec = op_spec(result.op)
    slot_id = spec.slot(result.op) or 0
    first, num = spec.pages(result.op) or (0, 0)
    slot = kvm.memslots.by_id[slot_id]
    low = slot.base_gfn + first
    head = (
        f"KVM_CLEAR_DIRTY_LOG runs on slot {slot_id} over pages {_hx(first)}+{num}"
        f" (gfns {_hx(low)}–{_hx(low + num - 1)}), every bit of its mask set."
    )
    target: tuple[int, Leaf] | None = None
    for gfn in range(low, low + min(num, _SCAN_REPORTED)):
        leaf = leaf_before(kvm, shown.touched, gfn)
        if leaf is not None and is_writable_pte(leaf.old):
            target = (gfn, leaf)
            break
    said = _pick(
        _sentences(result, shown.sim.kvm.masks),
        ("kvm_vm_ioctl", "kvm_clear_dirty_log_protect", "kvm_arch_mmu_enable_log_dirty_pt_masked"),
    )
    if result.error is not None:
        failed = f"No: the ioctl fails ({result.error}) and does nothing."
        prompt = (
            f"{head} Will it write-protect any page?"
            if target is None
            else f"{head} Will it write-protect gfn {_hx(target[0])}, mapped by {target[1].describe()}?"
        )
        return Question(
            result.index,
            CLEAR,
            prompt,
            _PROTECT_ANY if target is None else _PROTECT,
            "no",
            _join(failed, said),
        )
    if target is None:
        protected = any(
            is_writable_pte(old) and not is_writable_pte(sp.spt[index])
            for (sp, index), old in shown.touched.items()
        )
        prompt = f"{head} Will it write-protect any page?"
        if protected:
            return Question(result.index, CLEAR, prompt, _PROTECT_ANY, "yes", said)
        why = (
            "No: nothing in the range is mapped writable. In plain bitmap mode KVM_GET_DIRTY_LOG already"
            " cleared the bits it returned and re-protected their pages, so CLEAR finds nothing to do."
            if mode == "bitmap"
            else "No: nothing in the range is mapped writable, so there is nothing to re-protect."
        )
        return Question(result.index, CLEAR, prompt, _PROTECT_ANY, "no", _join(why, said))
    gfn, leaf = target
    prompt = f"{head} Will it write-protect gfn {_hx(gfn)}, mapped by {leaf.describe()}?"
    after = leaf_before(kvm, {}, gfn)
    change = f"{leaf.where}: {_hx(leaf.old)} → {_hx(leaf.new)}." if leaf.old != leaf.new else ""
    if not _writable_after(kvm, gfn):
        how = (
            f" gfn {_hx(gfn)} is now mapped by {after.where}, read-only."
            if after is not None and (after.sp, after.index) != (leaf.sp, leaf.index)
            else ""
        )
        return Question(result.index, CLEAR, prompt, _PROTECT, "yes", _join(change + how, said))
    why = (
        f"No: {leaf.where} keeps W: CLEAR re-protects only pages whose dirty bit was set, through the 4K"
        " rmaps."
    )
    return Question(result.index, CLEAR, prompt, _PROTECT, "no", _join(why, said))


def verdict_question(shown: Shown, result: StepResult) -> Question:
    """Will the migration lose a page? Asked at the stop-and-copy, where the model compares both sides."""
    lost = list(shown.sim.migration.lost or [])
    prompt = (
        "Stop-and-copy: the vCPUs stop, a last GET_DIRTY_LOG round copies what it reports, and the"
        " destination is compared with the source. Will any page be lost?"
    )
    said = _pick(_sentences(result, shown.sim.kvm.masks), ("migrate_verdict",))
    if lost:
        shown_gfns = ", ".join(_hx(g) for g in lost[:12]) + (" …" if len(lost) > 12 else "")
        fallback = f"Yes: {len(lost)} page{'s' if len(lost) != 1 else ''} lost: {shown_gfns}."
        return Question(result.index, VERDICT, prompt, _VERDICT, "yes", said or fallback)
    fallback = "No: every write since logging began was reported, so the destination matches the source."
    return Question(result.index, VERDICT, prompt, _VERDICT, "no", said or fallback)
