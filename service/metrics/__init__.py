"""Every metric the service exports, and the /metrics endpoint (own port).

One module per subsystem, each with its metrics and the observer methods that drive them:
rpc (gRPC and HTTP RED), edits (an edit's stages, admission, models, progress), batching
(scheduler ticks, the score network), cache (the result cache's counters, read at scrape
time), tenants, jobs (jobs and their webhooks), scrape (the endpoint). `Metrics` composes
them on one registry and is the observer every layer is given (service/server.py wires it).

Each server builds its own `Metrics` on its own CollectorRegistry (not the process-wide
default), so several servers in one process (the tests) never share a counter.

Conventions: base units (`_seconds`), counters end in `_total`, and labels take bounded
values only: the gRPC service, method, type and code (only registered methods are counted),
the model name (a request naming an unknown model fails before any labelled metric), the
backend error kind, the cache result. Never a request id, a seed or an image size.
Latency histograms share one set of buckets (common.py).

docs/metrics.md lists the metrics; deploy/grafana/ has a dashboard built on them.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import TYPE_CHECKING

import grpc
from prometheus_client import CollectorRegistry, Info

from service.metrics.batching import BatchingMetrics, EpsFn
from service.metrics.cache import CacheCollector
from service.metrics.common import BATCH_BUCKETS, LATENCY_BUCKETS
from service.metrics.edits import EditMetrics
from service.metrics.jobs import JobMetrics
from service.metrics.rpc import RPC_LABELS, RpcMetrics, split_method
from service.metrics.scrape import MetricsServer
from service.metrics.tenants import TenantMetrics

if TYPE_CHECKING:
    from service.backends.base import ModelInfo
    from service.batching import TickStats
    from service.cache import CacheStats
    from service.pipeline.admission import Admission
    from service.requests import EditOutcome

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "RPC_LABELS", "CacheCollector", "EpsFn", "Metrics", "MetricsServer",
           "split_method"]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The service's metrics on a registry of their own: the subsystems' metrics, and the
    observer methods the layers call (each passed on to its subsystem)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http: MetricsServer | None = None
        self.rpc = RpcMetrics(self.registry)
        self.edits = EditMetrics(self.registry)
        self.batching = BatchingMetrics(self.registry)
        self.tenants = TenantMetrics(self.registry)
        self.jobs = JobMetrics(self.registry)
        # what is running
        self.build_info = Info("sdedit_build", "versions of the service and its main libraries", registry=self.registry)
        self.build_info.info({"version": _version("sdedit-service"), "python": platform.python_version(),
                              "grpcio": _version("grpcio"), "onnxruntime": _version("onnxruntime")})

    # --- set-up --------------------------------------------------------------------------

    def watch_edits(self, admission: Admission, registry, cache, active: Callable[[], int]) -> None:
        """What the edit service has, read at scrape time: admission, the models (registry.all()
        and its default), the result cache's counters (cache None: no cache) and the active edits."""
        self.watch_admission(admission)
        self.describe_models((m.info for m in registry.all()), registry.default)
        if cache is not None:
            self.watch_cache(cache.stats)
        self.watch_active_edits(active)

    def watch_cache(self, stats: CacheStats) -> None:
        """The result cache keeps its own counters (service/cache/stats.py); they are read at scrape time."""
        self.registry.register(CacheCollector(stats))

    def watch_admission(self, admission: Admission) -> None:
        self.edits.watch_admission(admission)

    def describe_models(self, models: Iterable[ModelInfo], default: str) -> None:
        self.edits.describe_models(models, default)

    def describe_tenants(self, names: Iterable[str]) -> None:
        self.tenants.describe_tenants(names)

    def watch_active_edits(self, count: Callable[[], int]) -> None:
        self.batching.watch_active_edits(count)

    # --- RpcObserver (service/transport/grpc/interceptor.py), HttpObserver (rpc.py) ----------------------

    def rpc_started(self, method: str, rpc_type: str) -> None:
        self.rpc.rpc_started(method, rpc_type)

    def rpc_handled(self, method: str, rpc_type: str, code: grpc.StatusCode, seconds: float) -> None:
        self.rpc.rpc_handled(method, rpc_type, code, seconds)

    def http_handled(self, method: str, route: str, code: int, seconds: float) -> None:
        self.rpc.http_handled(method, route, code, seconds)

    # --- EditServiceObserver (service/pipeline/observer.py), BatchingObserver (batching.py) -------------------------

    def decoded(self, model: str, seconds: float) -> None:
        self.edits.decoded(model, seconds)

    def admitted(self, queue_seconds: float) -> None:
        self.edits.admitted(queue_seconds)

    def progress_dropped(self) -> None:
        self.edits.progress_dropped()

    def edit_finished(self, outcome: EditOutcome, tenant: str = "") -> None:
        self.edits.edit_finished(outcome)
        if tenant and not outcome.cached:  # a cached answer ran no network
            self.tenants.work_done(tenant, outcome.network_calls * len(outcome.images))

    def timed_network(self, model: str, eps_fn: EpsFn) -> EpsFn:
        return self.batching.timed_network(model, eps_fn)

    def batch_tick(self, stats: TickStats) -> None:
        self.batching.batch_tick(stats)

    # --- GateObserver (service/tenancy/auth.py), QuotaObserver (service/tenancy/quotas.py) -----------

    def tenant_request(self, tenant: str) -> None:
        self.tenants.tenant_request(tenant)

    def tenant_rejected(self, tenant: str, reason: str) -> None:
        self.tenants.tenant_rejected(tenant, reason)

    def quota_store_error(self, decision: str) -> None:
        self.tenants.quota_store_error(decision)

    # --- JobsObserver (service/jobs/observer.py), WebhookObserver (service/jobs/webhooks/)

    def job_submitted(self) -> None:
        self.jobs.job_submitted()

    def job_ended(self, state: str) -> None:
        self.jobs.job_ended(state)

    def job_started(self, kind: str) -> None:
        self.jobs.job_started(kind)

    def job_waited(self, seconds: float) -> None:
        self.jobs.job_waited(seconds)

    def webhook_attempt(self, result: str) -> None:
        self.jobs.webhook_attempt(result)

    def webhook_delivery(self, outcome: str) -> None:
        self.jobs.webhook_delivery(outcome)

    # --- the endpoint --------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serves /metrics over HTTP (port 0 = a free one); returns the port."""
        self._http = MetricsServer.start(self.registry, host, port)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None
