"""What the edit service tells about its edits and schedulers (service/metrics/ implements it;
the composition root, service/server.py, hands it in)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from service.batching.executor import EpsFn
from service.requests import EditOutcome


class EditServiceObserver(Protocol):
    def decoded(self, model: str, seconds: float) -> None: ...

    def admitted(self, queue_seconds: float) -> None: ...

    def edit_finished(self, outcome: EditOutcome, tenant: str = "") -> None: ...

    def progress_dropped(self) -> None:
        """A StreamEdit reader fell behind: an event (or a preview's images) was dropped."""

    def timed_network(self, model: str, eps_fn: EpsFn) -> EpsFn:
        """The network call predict_eps(x, t, deadline), timed and counted."""

    def batch_tick(self, stats) -> None:
        """One scheduler tick's statistics (service/batching/ TickStats)."""

    def watch_edits(self, admission, registry, cache, active: Callable[[], int]) -> None:
        """What to read at scrape time: admission, the models, the cache's counters, the active edits."""
