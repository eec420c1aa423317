"""The batch schedulers of a process, one per (model, channels, height, width), made on first
use: edits of one shape share one network call per step. The batch limit and the pipeline
depth (two calls in flight, the default with Triton; one in process) are decided here."""

from __future__ import annotations

import threading
from collections.abc import Callable

from service.backends.registry import LoadedModel
from service.batching.executor import EpsFn
from service.batching.scheduler import BatchScheduler
from service.config import Settings


class SchedulerRegistry:
    def __init__(self, settings: Settings, timed_network: Callable[[str, EpsFn], EpsFn], on_tick=None):
        """timed_network(model name, eps_fn) -> eps_fn: the network call as metrics time it;
        on_tick: every scheduler's tick statistics (TickStats)."""
        self.settings = settings
        self._timed_network = timed_network
        self._on_tick = on_tick
        self._schedulers: dict[tuple, BatchScheduler] = {}
        self._lock = threading.Lock()

    def get(self, model: LoadedModel, shape: tuple[int, ...]) -> BatchScheduler:
        key = (model.info.name, *shape)
        with self._lock:
            scheduler = self._schedulers.get(key)
            if scheduler is None:
                limit = self.settings.max_batch_images
                if model.info.max_batch_size:  # Triton's config bounds one call too
                    limit = min(limit, model.info.max_batch_size)
                scheduler = BatchScheduler("x".join(map(str, key)), self._timed_network(model.info.name, model.backend.predict_eps),
                                           limit, on_tick=self._on_tick, pipeline_depth=self.settings.effective_pipeline_depth)
                self._schedulers[key] = scheduler
            return scheduler

    @property
    def active(self) -> int:
        """Edits in every scheduler now."""
        with self._lock:
            schedulers = list(self._schedulers.values())
        return sum(s.active for s in schedulers)

    def close(self) -> None:
        with self._lock:
            schedulers, self._schedulers = list(self._schedulers.values()), {}
        for scheduler in schedulers:
            scheduler.close()
