"""Step-level batching: every running edit of one (model, channels, height, width) shares one
network call per step.

A BatchScheduler holds each admitted edit as an explicit state (state.py ActiveEdit around an
EditTrajectory from service/sde/engine.py: its samples, levels, sampler history,
generators, mask, repeat counter) and runs ticks on its own thread: one network call on the
concatenation of the chosen edits' samples, each sample with its own timestep, then every
chosen edit advances by its own step. Edits join and leave between ticks (continuous
batching); an edit always brings all of its samples. Before every call, every edit's stop
condition (cancelled, deadline, shutdown) is checked: a stopped edit leaves before the next
call and frees its place.

Each tick is decide -> execute -> update (scheduler.py): the split decision (costmodel.py:
one call in flight, or two with pipeline_depth 2, from the fit of the network's cost per call)
and the fair share across tenants by weight, oldest first within one (policy.py, a pure
function), when the active edits' samples exceed `max_batch_images`; the executor
(executor.py) launches and lands the calls; the update lets finished edits leave and feeds the
fit and the statistics (TickStats). registry.py keeps one scheduler per shape.
"""

from service.batching.costmodel import CallCosts, SplitDecision, SplitState, decide_split
from service.batching.policy import Share, Waiting, call_room, fair_share
from service.batching.registry import SchedulerRegistry
from service.batching.scheduler import BatchScheduler, TickStats
from service.batching.state import ActiveEdit

__all__ = [
    "ActiveEdit",
    "BatchScheduler",
    "CallCosts",
    "SchedulerRegistry",
    "Share",
    "SplitDecision",
    "SplitState",
    "TickStats",
    "Waiting",
    "call_room",
    "decide_split",
    "fair_share",
]
