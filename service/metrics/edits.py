"""Metrics of the edits themselves: their stages, admission (read at scrape time), the models, progress.

Stages are timed on successful edits only; failures show in grpc_server_handled_total.
The Metrics facade is the edit service's observer (service/pipeline/observer.py): the stages
here, each tenant's share of the work in tenants.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from service.metrics.common import LATENCY_BUCKETS
from service.pipeline.procmem import peak_rss_bytes

if TYPE_CHECKING:
    from service.backends.base import ModelInfo
    from service.pipeline.admission import Admission
    from service.requests import EditOutcome


class EditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._stages(registry)
        self._admission(registry)
        self.progress_dropped_total = Counter("sdedit_stream_progress_dropped", "StreamEdit progress events dropped "
                                              "because the client read slower than the edit ran", registry=registry)
        self.model_info = Info("sdedit_model", "the models this server serves", ("model",), registry=registry)

    def _stages(self, r: CollectorRegistry) -> None:
        self.queue_wait_seconds = Histogram("sdedit_queue_wait_seconds", "time an admitted edit waited for a slot",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.decode_seconds = Histogram("sdedit_decode_seconds", "validating and decoding a request's image and mask",
                                        ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.sde_loop_seconds = Histogram("sdedit_sde_loop_seconds", "the reverse-SDE loop of one edit, network calls included",
                                          ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.encode_seconds = Histogram("sdedit_encode_seconds", "encoding an edit's output images",
                                        ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.edit_seconds = Histogram("sdedit_edit_seconds", "one whole edit, from receipt to response; "
                                      "cached: answered by the result cache or an identical edit in flight",
                                      ("model", "cached"), buckets=LATENCY_BUCKETS, registry=r)
        self.samples_total = Counter("sdedit_samples", "output images produced by completed edits", ("model",), registry=r)

    def _admission(self, r: CollectorRegistry) -> None:
        self.edits_in_flight = Gauge("sdedit_edits_in_flight", "admitted edits not yet finished (running or queued)", registry=r)
        self.queue_depth = Gauge("sdedit_queue_depth", "admitted edits waiting for a slot", registry=r)
        self.edit_slots = Gauge("sdedit_edit_slots", "edits that can run at once (max_active_edits)", registry=r)
        self.queue_capacity = Gauge("sdedit_queue_capacity", "edits that may wait for a slot (max_queue)", registry=r)
        self.memory_budget_bytes = Gauge("sdedit_memory_budget_bytes", "memory admission may give to edits "
                                         "(memory_budget_mib less the process at start-up and a headroom)", registry=r)
        self.memory_admitted_bytes = Gauge("sdedit_memory_admitted_bytes", "estimated memory of the edits admitted now",
                                           registry=r)
        self.process_peak_rss_bytes = Gauge("sdedit_process_peak_resident_memory_bytes", "the largest resident memory "
                                            "this process has had", registry=r)

    # --- set-up ------------------------------------------------------------------------------

    def watch_admission(self, admission: Admission) -> None:
        self.edits_in_flight.set_function(lambda: admission.in_flight)
        self.queue_depth.set_function(lambda: admission.waiting)
        self.edit_slots.set(admission.slots)
        self.queue_capacity.set(admission.max_queue)
        self.memory_budget_bytes.set(admission.budget_bytes or 0)
        self.memory_admitted_bytes.set_function(lambda: admission.used_bytes)
        self.process_peak_rss_bytes.set_function(peak_rss_bytes)

    def describe_models(self, models: Iterable[ModelInfo], default: str) -> None:
        for info in models:
            self.model_info.labels(model=info.name).info({
                "content_hash": info.content_hash, "sde": info.sde.sde_type, "width": str(info.width),
                "height": str(info.height), "channels": str(info.channels),
                "flexible_size": str(info.flexible_size).lower(), "default": str(info.name == default).lower(),
            })

    # --- an edit's stages --------------------------------------------------------------------

    def decoded(self, model: str, seconds: float) -> None:
        self.decode_seconds.labels(model).observe(seconds)

    def admitted(self, queue_seconds: float) -> None:
        self.queue_wait_seconds.observe(queue_seconds)

    def edit_finished(self, outcome: EditOutcome) -> None:
        model, t = outcome.model.name, outcome.timings
        self.edit_seconds.labels(model, str(outcome.cached).lower()).observe(t.total_seconds)
        if outcome.cached:
            return  # no loop ran and no image was made for this response
        self.sde_loop_seconds.labels(model).observe(t.sde_seconds)
        self.encode_seconds.labels(model).observe(t.encode_seconds)
        self.samples_total.labels(model).inc(len(outcome.images))

    def progress_dropped(self) -> None:
        self.progress_dropped_total.inc()
