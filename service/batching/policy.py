"""Which edits run in the next call: a fair share across tenants by weight, oldest first within
one. A pure function of the active edits' plain state, the tenants' counts and the call's room:
the scheduler keeps the counts between calls, a test calls it directly.

Each tenant's images served are counted (divided by its weight, across calls); when the edits
not in a call exceed the room, the call is filled edit by edit, each time from the tenant
served least so far that has an edit that fits, taking its oldest edit that fits (whole edits
only). A tenant that becomes active starts level with the least served of the active ones, so
it neither waits behind a heavy tenant's backlog nor gets a burst for its idle time. With one
tenant this is oldest first: whole edits in arrival order while they fit; an edit that does
not fit waits for the next call and, being older than every later arrival of its tenant, is
never starved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    """What the policy reads of an active edit (service/batching/state.py ActiveEdit has it)."""

    @property
    def order(self) -> int: ...  # arrival: unique, oldest lowest
    @property
    def tenant(self) -> str: ...
    @property
    def weight(self) -> float: ...
    @property
    def images(self) -> int: ...
    @property
    def in_flight(self) -> bool: ...


E = TypeVar("E", bound=Queued)


@dataclass(frozen=True)
class Waiting:
    """An edit's plain state, for callers (tests) that have no ActiveEdit."""

    order: int
    images: int
    tenant: str = ""
    weight: float = 1.0
    in_flight: bool = False


@dataclass(frozen=True)
class Share(Generic[E]):
    """One call's edits (oldest first) and the tenants' counts after it."""

    chosen: list[E]
    served: dict[str, float]


def call_room(max_batch_images: int, groups: int, active_images: int) -> int:
    """The images one call may take: the batch limit, or with two groups in flight about half
    of the active images (in calls or not)."""
    if groups > 1:
        return min(max_batch_images, -(-active_images // 2))
    return max_batch_images


def fair_share(edits: Sequence[E], served: Mapping[str, float], room: int) -> Share[E]:
    """Whole edits not in flight for one call of at most `room` images. `edits`: every active
    edit in arrival order (those in flight keep their tenant active); `served`: each tenant's
    images served / weight so far (only differences matter). Inputs are left unchanged."""
    counts = dict(served)
    queues: dict[str, list[E]] = {}
    for edit in edits:  # arrival order: each tenant's edits oldest first
        queues.setdefault(edit.tenant, [])
        if not edit.in_flight:
            queues[edit.tenant].append(edit)
    for gone in set(counts) - set(queues):
        del counts[gone]
    level = min(counts.values(), default=0.0)
    for tenant in queues:
        counts.setdefault(tenant, level)  # newly active: level with the least served
    ready = [edit for edit in edits if not edit.in_flight]
    if sum(edit.images for edit in ready) <= room:
        chosen = ready  # everything fits: nobody waits
        for edit in chosen:
            counts[edit.tenant] += edit.images / edit.weight
    else:
        chosen = _fill({tenant: queued for tenant, queued in queues.items() if queued}, counts, room)
        if not chosen and ready:  # an edit larger than the room (half, with two groups): it goes alone
            chosen = [ready[0]]
            counts[ready[0].tenant] += ready[0].images / ready[0].weight
    low = min(counts.values(), default=0.0)
    for tenant in counts:  # keep the counts small: only their differences matter
        counts[tenant] -= low
    return Share(chosen, counts)


def _fill(queues: dict[str, list[E]], counts: dict[str, float], room: int) -> list[E]:
    """Fills one call edit by edit from the least served tenant that has an edit that fits
    (ties: the tenant with the oldest edit), taking that tenant's oldest edit that fits.
    Updates `counts` (fair_share's own copy)."""
    chosen = []
    candidates = {tenant: list(queued) for tenant, queued in queues.items()}
    while candidates:
        tenant = min(candidates, key=lambda name: (counts[name], candidates[name][0].order))
        edit = next((e for e in candidates[tenant] if e.images <= room), None)
        if edit is None:
            del candidates[tenant]  # nothing of this tenant fits what is left of the call
            continue
        candidates[tenant].remove(edit)
        if not candidates[tenant]:
            del candidates[tenant]
        chosen.append(edit)
        room -= edit.images
        counts[tenant] += edit.images / edit.weight
    chosen.sort(key=lambda e: e.order)
    return chosen
