"""The checks of a whole scenario, beyond what each model says of itself: memslots that KVM would accept
together, and steps that can all run in order (each op's `check` facet, engine/ops), so that the engine
never meets a gfn outside every slot, a vCPU that does not exist or a GET_DIRTY_LOG on a slot that is not
logged, and a user learns about a typo in one line instead of from a half-run trace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.ops.base import CheckState
from engine.ops.registry import Step, op_spec
from engine.scenario.cost import MAX_TOTAL_PAGES
from engine.scenario.wording import fail

if TYPE_CHECKING:
    from engine.scenario.models import Memslot


def check_memslots(memslots: Sequence[Memslot]) -> None:
    """Slots must have distinct ids and disjoint gfn ranges, as KVM_SET_USER_MEMORY_REGION demands."""
    for position, slot in enumerate(memslots):
        for earlier_position, earlier in enumerate(memslots[:position]):
            if slot.id == earlier.id:
                raise fail(
                    f"memslots[{position}].id",
                    f"slot {slot.id} is already memslots[{earlier_position}]",
                )
            if slot.base_gfn < earlier.end_gfn and earlier.base_gfn < slot.end_gfn:
                span = f"gfns {earlier.base_gfn:#x}-{earlier.end_gfn - 1:#x}"
                raise fail(f"memslots[{position}]", f"overlaps memslot {earlier.id} ({span})")
    total = sum(slot.npages for slot in memslots)
    if total > MAX_TOTAL_PAGES:
        raise fail(
            "memslots",
            f"{total} pages in all, more than the limit of {MAX_TOTAL_PAGES} (4 GiB)",
        )


def check_steps(vcpus: int, memslots: Sequence[Memslot], steps: Sequence[Step], spaces: int = 0) -> None:
    """Walk the steps once, tracking which slots are logged, so no step fails halfway through a run.
    `spaces` is the number of guest address spaces under shadow paging, 0 under TDP."""
    state = CheckState(vcpus, list(memslots), spaces=spaces)
    for index, step in enumerate(steps):
        op_spec(step).check(state, index, step)
    for slot, index in state.split_gets.items():
        raise fail(f"step {index} (get_dirty_log)", f"the split GET_DIRTY_LOG of slot {slot} never ends:"
                   " add a get_dirty_log_end step", step=index, field="split")
