"""RED metrics of the two doors: gRPC calls (named as go-grpc-prometheus names them) and HTTP/JSON requests.

RpcMetrics is the RpcObserver of the gRPC interceptor (service/transport/grpc/interceptor.py) and the HttpObserver
below, which service/transport/http/door.py calls once per answered request.
"""

from __future__ import annotations

from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.metrics.common import LATENCY_BUCKETS

RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class HttpObserver(Protocol):
    def http_handled(self, method: str, route: str, code: int, seconds: float) -> None: ...


def split_method(full_method: str) -> tuple[str, str]:
    """'/sdedit.v1.ImageEditor/Edit' -> ('sdedit.v1.ImageEditor', 'Edit')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        # unary and server-streaming calls; only registered methods are counted
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
