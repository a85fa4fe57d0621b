"""Guest accesses under shadow paging: "does it exit to KVM, and what does KVM do?".

A paging guest on a shadow MMU never takes the fast path (its faults are #PF exits that walk the guest's
tables), so the TDP question's fast and "bail" answers would be wrong by construction. What there is to
predict instead: whether the TLB or the shadow tables already allow the access, whether KVM fixes the
shadow after a #PF exit, emulates a store to a write-protected guest table, or finds that the guest's own
walk fails and hands it the #PF.
"""

from __future__ import annotations

from app.predict.base import FAULT, Choice, Question, _ensure, _hx, _pick, _sentences
from app.replay import Shown
from app.views.shadow_walk import shadow_outcome
from engine.ops.registry import op_spec
from engine.simulation import StepResult

_WRITE = (
    Choice("none", "No exit: the TLB or a writable shadow spte lets it through"),
    Choice("fixed", "A #PF exit: KVM walks the guest's tables and fixes the shadow spte"),
    Choice("emulated", "A #PF exit: the page is a write-protected guest table, KVM emulates the store"),
    Choice("guest_pf", "The guest's own walk fails: KVM injects the #PF into the guest"),
)
_READ = (
    Choice("none", "No exit: the TLB or a shadow spte lets it through"),
    Choice("fixed", "A #PF exit: KVM walks the guest's tables and builds the shadow spte"),
    Choice("guest_pf", "The guest's own walk fails: KVM injects the #PF into the guest"),
)
_MANY = (
    Choice("none", "No exit at all"),
    Choice("fixed", "#PF exits, each fixed by a new or changed shadow spte"),
    Choice("emulated", "At least one store emulated (a write-protected guest table)"),
    Choice("guest_pf", "At least one #PF injected into the guest"),
)
_LEADS = {
    "none": "No exit",
    "fixed": "A #PF exit that KVM fixes",
    "emulated": "An emulated store",
    "guest_pf": "A #PF injected into the guest",
    "mmio": "An MMIO access: the address leaves every memslot, KVM emulates it",
    "livelock": "Faults without progress: the guest would hang",
}
_STORY = (
    "paging64_page_fault",
    "walk_addr_generic",
    "kvm_mmu_get_page",
    "kvm_mmu_unsync_page",
    "x86_emulate_instruction",
    "kvm_mmu_pte_write",
    "inject_page_fault",
    "guest_access",
)


def shadow_fault_question(shown: Shown, result: StepResult) -> Question:
    """Does the access exit, and what does KVM do with the exit? Options by the kind of access only."""
    access = op_spec(result.op).access(result.op)
    assert access is not None, "an op that asks about faults makes guest accesses"
    write, count, vcpu = access.write, access.count, access.vcpu
    gva = access.gva if access.gva is not None else access.gfn << 12
    # A step given by gfn goes through the guest's identity mapping of it.
    where = f"gva {_hx(gva)}"
    if access.gva is None:
        where += f" (gfn {_hx(access.gfn)}'s identity address)"
    verb = "writes" if write else "reads"
    correct = shadow_outcome(result)
    if count == 1:
        options = _WRITE if write else _READ
        prompt = f"vCPU {vcpu} {verb} {where}. Does it exit to KVM, and what does KVM do?"
    else:
        options = _MANY
        prompt = f"vCPU {vcpu} {verb} {count} pages from {where}. What do these accesses cause?"
    said = _sentences(result, shown.sim.kvm.masks)
    explanation = _pick(said, _STORY) or _count_text(result)
    choices = _ensure(options, correct, _LEADS.get(correct, correct))
    return Question(result.index, FAULT, prompt, choices, correct, explanation)


def _count_text(result: StepResult) -> str:
    slow = result.fault_counts.get("slow", 0)
    if not slow:
        return "No access exited to KVM: the TLB or the shadow tables already allowed every one."
    return f"The step took {slow} #PF exit{'s' if slow != 1 else ''}."
