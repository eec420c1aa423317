"""Metrics of the batch schedulers (service/batching/) and the score network they call.

BatchingObserver is what service/pipeline/editing.py wires into each scheduler: the network function
wrapped by timed_network (every call timed and counted, failures by kind), batch_tick as its
on_tick, and the count of edits the schedulers hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.errors import BackendError
from service.metrics.common import BATCH_BUCKETS, LATENCY_BUCKETS

if TYPE_CHECKING:
    from service.batching import TickStats

EpsFn = Callable[[np.ndarray, np.ndarray, float | None], np.ndarray]  # predict_eps(x, t, deadline)


class BatchingObserver(Protocol):
    def timed_network(self, model: str, eps_fn: EpsFn) -> EpsFn: ...

    def batch_tick(self, stats: TickStats) -> None: ...

    def watch_active_edits(self, count: Callable[[], int]) -> None: ...


class BatchingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.network_call_seconds = Histogram("sdedit_network_call_seconds", "one score-network call (one step, whole batch)",
                                              ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.network_calls_total = Counter("sdedit_network_calls", "score-network calls (one per step, whole batch)",
                                           ("model",), registry=r)
        self.network_batch_size = Histogram("sdedit_network_batch_size", "samples per score-network call",
                                            ("model",), buckets=BATCH_BUCKETS, registry=r)
        self.network_busy_seconds_total = Counter("sdedit_network_busy_seconds", "seconds spent in score-network calls "
                                                  "(rate() is the network's busy fraction, per scheduler thread)", registry=r)
        self.batch_edits = Histogram("sdedit_batch_edits", "edits sharing one network call (step-level batching)",
                                     buckets=BATCH_BUCKETS, registry=r)
        self.batch_tick_cpu_seconds = Histogram("sdedit_batch_tick_cpu_seconds", "CPU seconds of one batch tick "
                                                "outside the network (inputs, every edit's step, progress)",
                                                buckets=LATENCY_BUCKETS, registry=r)
        self.active_edits = Gauge("sdedit_active_edits", "edits in the batch schedulers now (running, sharing calls)",
                                  registry=r)
        self.backend_errors_total = Counter("sdedit_backend_errors", "failed score-network calls, by kind",
                                            ("model", "kind"), registry=r)

    def timed_network(self, model: str, eps_fn: EpsFn) -> EpsFn:
        """Wraps a backend's predict_eps(x, t, deadline): times and counts each call, counts its
        failures by kind; the deadline (the call's earliest) goes to the backend as it is."""
        seconds = self.network_call_seconds.labels(model)
        calls = self.network_calls_total.labels(model)
        batch = self.network_batch_size.labels(model)

        def timed(x: np.ndarray, t: np.ndarray, deadline: float | None = None) -> np.ndarray:
            started = time.perf_counter()
            try:
                eps = eps_fn(x, t, deadline)
            except BackendError as exc:
                self.backend_errors_total.labels(model, exc.kind).inc()
                raise
            except Exception:
                self.backend_errors_total.labels(model, "unexpected").inc()
                raise
            seconds.observe(time.perf_counter() - started)
            calls.inc()
            batch.observe(len(x))
            return eps

        return timed

    def batch_tick(self, stats: TickStats) -> None:
        """One scheduler tick: its images are counted by timed_network."""
        self.network_busy_seconds_total.inc(stats.network_seconds)
        self.batch_edits.observe(stats.edits)
        self.batch_tick_cpu_seconds.observe(stats.cpu_seconds)

    def watch_active_edits(self, count: Callable[[], int]) -> None:
        self.active_edits.set_function(count)
