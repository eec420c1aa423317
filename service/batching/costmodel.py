"""The network's cost per call and the split decision: whether the active edits run as one
group (one call, then its steps) or as two (pipeline_depth 2: one group's steps run while the
other group's call does).

Two groups pay when the steps' serial work for the active images costs more than a second
call's fixed cost (the CallCosts fit). While the fit knows one batch size only (edits that
arrive together and stay in step), its bound on the fixed cost is that size's whole call; if
the serial work is a tenth of that or more, one split is tried to learn a second size. Once
split, the groups stay split until the serial work falls below 3/4 of the fixed cost (no
flapping at the edge). `decide_split` reads; the caller keeps its answer's `split` (the
hysteresis state) and its own measurements (`CallCosts.add`, `SplitState.observe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

SERIAL_EMA = 0.1  # weight of the latest tick in the moving average of serial seconds per image
PROBE_FRACTION = 0.1  # with one batch size known: split once if the serial work is this share of its call
HYSTERESIS = 0.75  # two groups go back to one when the serial work falls below this share of a call's fixed cost


class CallCosts:
    """The network's cost per call as a + b * images, fitted (least squares) to the latest
    seconds seen at each batch size. `a`, the fixed cost of a call, is what splitting the
    active edits into two calls costs; until two batch sizes have been seen, the one call time
    known bounds it from above (a <= a + b * n), so the scheduler does not split on a guess."""

    def __init__(self, smoothing: float = 0.2):
        self.smoothing = smoothing
        self._seconds: dict[int, float] = {}  # batch size -> moving average of call seconds

    def add(self, images: int, seconds: float) -> None:
        old = self._seconds.get(images)
        self._seconds[images] = seconds if old is None else old + self.smoothing * (seconds - old)

    @property
    def sizes(self) -> int:
        """How many batch sizes have been seen."""
        return len(self._seconds)

    def fixed_seconds(self) -> float:
        if not self._seconds:
            return float("inf")
        if len(self._seconds) == 1:
            return next(iter(self._seconds.values()))
        n = np.array(list(self._seconds), dtype=np.float64)
        seconds = np.array(list(self._seconds.values()))
        _slope, intercept = np.polyfit(n, seconds, 1)
        return max(float(intercept), 0.0)


class CostFit(Protocol):
    """The fit the scheduler keeps (CallCosts, or a stand-in with fixed costs); the split
    decision reads `sizes` and `fixed_seconds` only."""

    def add(self, images: int, seconds: float) -> None: ...
    @property
    def sizes(self) -> int: ...
    def fixed_seconds(self) -> float: ...


@dataclass
class SplitState:
    """What the split decision carries from tick to tick: the moving average of the scheduler
    thread's seconds outside calls per image, and whether the edits were last split."""

    serial_per_image: float = 0.0
    split: bool = False

    def observe(self, serial_seconds: float, images: int) -> None:
        """One landed call: its thread's wall seconds outside the call, for `images` images."""
        self.serial_per_image += SERIAL_EMA * (serial_seconds / images - self.serial_per_image)


@dataclass(frozen=True)
class SplitDecision:
    groups: int  # calls to have in flight: 1 or 2
    split: bool  # the hysteresis state to keep (unchanged where nothing was weighed)


def decide_split(pipeline_depth: int, images: int, state: SplitState, costs: CostFit) -> SplitDecision:
    """Calls to have in flight for `images` active images (in calls or not); reads only."""
    if pipeline_depth < 2 or images < 2:
        return SplitDecision(1, state.split)
    serial = state.serial_per_image * images
    fixed = costs.fixed_seconds()
    if costs.sizes < 2:
        split = serial >= PROBE_FRACTION * fixed
    elif state.split:
        split = serial >= HYSTERESIS * fixed
    else:
        split = serial >= fixed
    return SplitDecision(2 if split else 1, split)
