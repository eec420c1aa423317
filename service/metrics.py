"""Every metric the service exports, in one place, and the /metrics endpoint (own port).

Each server builds its own `Metrics` on its own CollectorRegistry (not the process-wide
default), so several servers in one process (the tests) never share a counter.

Conventions: base units (`_seconds`), counters end in `_total`, and labels take bounded
values only: the gRPC service, method, type and code (only registered methods are counted),
the model name (a request naming an unknown model fails before any labelled metric), the
backend error kind, the cache result. Never a request id, a seed or an image size.
Latency histograms share one set of buckets, from 0.5 ms (one network call) to 600 s
(a full-schedule edit behind a queue); the client library's default stops at 10 s.

docs/metrics.md lists the metrics; deploy/grafana/ has a dashboard built on them.
"""

from __future__ import annotations

import http.server
import platform
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import TYPE_CHECKING

import grpc
import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.errors import BackendError
from service.pipeline.procmem import peak_rss_bytes

if TYPE_CHECKING:
    from service.backends.base import ModelInfo
    from service.batching import TickStats
    from service.cache import CacheStats
    from service.pipeline.admission import Admission
    from service.pipeline.requests import EditOutcome

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

# No `<name>_created` series: they would double the series count and nothing reads them.
disable_created_metrics()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def split_method(full_method: str) -> tuple[str, str]:
    """'/sdedit.v1.ImageEditor/Edit' -> ('sdedit.v1.ImageEditor', 'Edit')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


class Metrics:
    """The service's metrics on a registry of their own, with the hooks the layers call."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self._http: MetricsServer | None = None

        # gRPC RED, named as go-grpc-prometheus names them (unary and server-streaming calls)
        self.rpc_started_total = Counter("grpc_server_started", "RPCs started on the server", RPC_LABELS, registry=r)
        self.rpc_handled_total = Counter("grpc_server_handled", "RPCs completed on the server, by status code",
                                         (*RPC_LABELS, "grpc_code"), registry=r)
        self.rpc_handling_seconds = Histogram("grpc_server_handling_seconds", "time from an RPC's start to its status",
                                              RPC_LABELS, buckets=LATENCY_BUCKETS, registry=r)

        # the HTTP/JSON door (service/transport/http/): route is the route's template, "unmatched" for
        # unknown paths, so the label stays bounded
        self.http_requests_total = Counter("sdedit_http_requests", "HTTP requests answered, by method, route template "
                                           "and HTTP code (499: the client went away)", ("method", "route", "code"), registry=r)
        self.http_request_seconds = Histogram("sdedit_http_request_seconds", "time from an HTTP request's arrival to its "
                                              "answer's end (an event stream: to its last event)", ("method", "route"),
                                              buckets=LATENCY_BUCKETS, registry=r)

        # the stages of an edit (successful edits; failures show in grpc_server_handled_total)
        self.queue_wait_seconds = Histogram("sdedit_queue_wait_seconds", "time an admitted edit waited for a slot",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.decode_seconds = Histogram("sdedit_decode_seconds", "validating and decoding a request's image and mask",
                                        ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.network_call_seconds = Histogram("sdedit_network_call_seconds", "one score-network call (one step, whole batch)",
                                              ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.sde_loop_seconds = Histogram("sdedit_sde_loop_seconds", "the reverse-SDE loop of one edit, network calls included",
                                          ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.encode_seconds = Histogram("sdedit_encode_seconds", "encoding an edit's output images",
                                        ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.edit_seconds = Histogram("sdedit_edit_seconds", "one whole edit, from receipt to response; "
                                      "cached: answered by the result cache or an identical edit in flight",
                                      ("model", "cached"), buckets=LATENCY_BUCKETS, registry=r)

        # work done
        self.network_calls_total = Counter("sdedit_network_calls", "score-network calls (one per step, whole batch)",
                                           ("model",), registry=r)
        self.network_batch_size = Histogram("sdedit_network_batch_size", "samples per score-network call",
                                            ("model",), buckets=BATCH_BUCKETS, registry=r)
        self.samples_total = Counter("sdedit_samples", "output images produced by completed edits", ("model",), registry=r)
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

        # admission (read at scrape time)
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
        self.progress_dropped_total = Counter("sdedit_stream_progress_dropped", "StreamEdit progress events dropped "
                                              "because the client read slower than the edit ran", registry=r)

        # tenants (--auth-tokens-file): the label takes the tenant names of that file only, and
        # "" for callers that are not one (no token, a wrong one)
        self.tenant_requests_total = Counter("sdedit_tenant_requests", "edit requests by tenant, past authentication",
                                             ("tenant",), registry=r)
        self.tenant_rejections_total = Counter("sdedit_tenant_rejections", "calls refused by the tenant policy, by "
                                               "reason: unauthenticated, permission_denied, max_in_flight, "
                                               "work_per_minute", ("tenant", "reason"), registry=r)

        self.tenant_work_total = Counter("sdedit_tenant_work", "network work of each tenant's completed edits, in "
                                         "network calls x images (what work_per_minute limits)", ("tenant",), registry=r)
        self.quota_store_errors_total = Counter("sdedit_quota_store_errors", "quota checks the store (Redis) could not "
                                                "answer, by what was done: allowed (quota_fail_open) or refused",
                                                ("decision",), registry=r)

        # jobs (service/jobs/manager.py): counted by the replica that did it
        self.jobs_submitted_total = Counter("sdedit_jobs_submitted", "jobs queued by SubmitEdit on this replica", registry=r)
        self.jobs_ended_total = Counter("sdedit_jobs_ended", "jobs this replica ended, by final state: succeeded, failed, "
                                        "cancelled", ("state",), registry=r)
        self.job_runs_total = Counter("sdedit_job_runs", "job runs this replica started: first (a queued job) or "
                                      "reclaimed (a job whose replica died, after its lease)", ("kind",), registry=r)
        self.job_wait_seconds = Histogram("sdedit_job_wait_seconds", "from a job's submission to the start of the run "
                                          "that this replica began", buckets=LATENCY_BUCKETS, registry=r)

        # completion webhooks of jobs (service/jobs/webhooks.py)
        self.webhook_deliveries_total = Counter("sdedit_webhook_deliveries", "job webhook deliveries by how they ended: "
                                                "delivered, rejected, exhausted, refused, unsigned, expired, abandoned",
                                                ("outcome",), registry=r)
        self.webhook_attempts_total = Counter("sdedit_webhook_attempts", "job webhook POSTs by result: 2xx, 3xx, 4xx, "
                                              "5xx, or error (no answer: network, TLS, timeout)", ("result",), registry=r)

        # every job state, run kind and delivery outcome shows from the start, at 0 (a rate() over
        # a series that appears with its first increment misses that increment)
        for state in ("succeeded", "failed", "cancelled"):
            self.jobs_ended_total.labels(state)
        for kind in ("first", "reclaimed"):
            self.job_runs_total.labels(kind)
        for outcome in ("delivered", "rejected", "exhausted", "refused", "unsigned", "expired", "abandoned"):
            self.webhook_deliveries_total.labels(outcome)

        # what is running
        self.build_info = Info("sdedit_build", "versions of the service and its main libraries", registry=r)
        self.build_info.info({"version": _version("sdedit-service"), "python": platform.python_version(),
                              "grpcio": _version("grpcio"), "onnxruntime": _version("onnxruntime")})
        self.model_info = Info("sdedit_model", "the models this server serves", ("model",), registry=r)

    # --- set-up --------------------------------------------------------------------------

    def watch_cache(self, stats: CacheStats) -> None:
        """The result cache keeps its own counters (service/cache/stats.py); they are read at scrape time."""
        self.registry.register(CacheCollector(stats))

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

    def describe_tenants(self, names: Iterable[str]) -> None:
        for name in names:
            self.tenant_requests_total.labels(name)
            self.tenant_work_total.labels(name)

    # --- hooks ---------------------------------------------------------------------------

    def tenant_request(self, tenant: str) -> None:
        self.tenant_requests_total.labels(tenant).inc()

    def quota_store_error(self, decision: str) -> None:
        self.quota_store_errors_total.labels(decision).inc()

    def tenant_rejected(self, tenant: str, reason: str) -> None:
        self.tenant_rejections_total.labels(tenant, reason).inc()

    def webhook_attempt(self, result: str) -> None:
        self.webhook_attempts_total.labels(result).inc()

    def webhook_delivery(self, outcome: str) -> None:
        self.webhook_deliveries_total.labels(outcome).inc()

    def rpc_started(self, method: str, rpc_type: str) -> None:
        service, name = split_method(method)
        self.rpc_started_total.labels(rpc_type, service, name).inc()

    def rpc_handled(self, method: str, rpc_type: str, code: grpc.StatusCode, seconds: float) -> None:
        service, name = split_method(method)
        self.rpc_handled_total.labels(rpc_type, service, name, code.name).inc()
        self.rpc_handling_seconds.labels(rpc_type, service, name).observe(seconds)

    def http_handled(self, method: str, route: str, code: int, seconds: float) -> None:
        self.http_requests_total.labels(method, route, str(code)).inc()
        self.http_request_seconds.labels(method, route).observe(seconds)

    def decoded(self, model: str, seconds: float) -> None:
        self.decode_seconds.labels(model).observe(seconds)

    def progress_dropped(self) -> None:
        self.progress_dropped_total.inc()

    def admitted(self, queue_seconds: float) -> None:
        self.queue_wait_seconds.observe(queue_seconds)

    def timed_network(self, model: str, eps_fn: EpsFn) -> EpsFn:
        """Wraps a backend's predict_eps: times and counts each call, counts its failures by kind."""
        seconds = self.network_call_seconds.labels(model)
        calls = self.network_calls_total.labels(model)
        batch = self.network_batch_size.labels(model)

        def timed(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            try:
                eps = eps_fn(x, t)
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
        """One scheduler tick (service/batching.py): its images are counted by timed_network."""
        self.network_busy_seconds_total.inc(stats.network_seconds)
        self.batch_edits.observe(stats.edits)
        self.batch_tick_cpu_seconds.observe(stats.cpu_seconds)

    def watch_active_edits(self, count: Callable[[], int]) -> None:
        self.active_edits.set_function(count)

    def edit_finished(self, outcome: EditOutcome, tenant: str = "") -> None:
        model, t = outcome.model.name, outcome.timings
        self.edit_seconds.labels(model, str(outcome.cached).lower()).observe(t.total_seconds)
        if outcome.cached:
            return  # no loop ran and no image was made for this response
        if tenant:
            self.tenant_work_total.labels(tenant).inc(outcome.network_calls * len(outcome.images))
        self.sde_loop_seconds.labels(model).observe(t.sde_seconds)
        self.encode_seconds.labels(model).observe(t.encode_seconds)
        self.samples_total.labels(model).inc(len(outcome.images))

    # --- the endpoint --------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serves /metrics over HTTP (port 0 = a free one); returns the port."""
        self._http = MetricsServer((host, port), self.registry)
        threading.Thread(target=self._http.serve_forever, name="sdedit-metrics", daemon=True).start()
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class MetricsServer(http.server.HTTPServer):
    """/metrics on a bounded server: a few worker threads (prometheus_client's own server
    starts a thread per connection), connections beyond them and a short backlog closed at
    once, and every connection timed out after a few seconds (no slow client holds a worker)."""

    WORKERS = 2
    BACKLOG = 4  # connections waiting for a worker; more are closed
    TIMEOUT_SECONDS = 5.0

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry):
        self.registry = registry
        self._pool = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="sdedit-metrics")
        self._slots = threading.BoundedSemaphore(self.WORKERS + self.BACKLOG)
        self.refused = 0
        super().__init__(address, _MetricsHandler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        self._pool.submit(self._handle, request, client_address)

    def _handle(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a broken connection is that client's problem
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        pass  # no traceback per dropped scrape

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    timeout = MetricsServer.TIMEOUT_SECONDS
    server: MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass  # no log line per scrape


CACHE_REQUESTS = {"hit": "hits", "coalesced": "coalesced", "miss": "misses", "uncacheable": "uncacheable"}
CACHE_COUNTERS = {  # metric (without _total) -> (CacheStats field, help)
    "sdedit_cache_errors": ("errors", "failed or timed-out cache operations, each skipped (the cache fails open)"),
    "sdedit_cache_skipped": ("skipped", "cache operations not tried because the cache was failing open"),
    "sdedit_cache_stored": ("stored", "results and request_id records written to the cache"),
    "sdedit_cache_too_large": ("too_large", "responses over cache_max_entry_bytes (request_id records: the "
                               "message limit), or declined by the store, not stored"),
    "sdedit_cache_request_id_replays": ("request_id_replays", "repeated request_ids answered with the first response"),
    "sdedit_cache_request_id_conflicts": ("request_id_conflicts", "request_ids reused for a different request"),
    "sdedit_cache_request_id_unrecorded": ("request_id_unrecorded", "request_id records not kept (too large, "
                                           "declined or cache down): a retry of those runs the edit again"),
}


class CacheCollector(Collector):
    """The result cache's counters as metrics, read when scraped."""

    def __init__(self, stats: CacheStats):
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily("sdedit_cache_requests", "edit requests by what the result cache did: hit (read "
                                       "from the cache), coalesced (shared an identical edit in flight), miss (ran "
                                       "here), uncacheable (unseeded, no request_id)", labels=["result"])
        for result, field in CACHE_REQUESTS.items():
            requests.add_metric([result], getattr(self.stats, field))
        yield requests
        for name, (field, help_text) in CACHE_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=getattr(self.stats, field))
        yield GaugeMetricFamily("sdedit_cache_available", "1 while the cache answers, 0 while it fails open",
                                value=1.0 if self.stats.available else 0.0)
