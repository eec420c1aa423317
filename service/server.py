"""The gRPC server: ImageEditor, grpc.health.v1, reflection, message limits, shutdown.

On SIGTERM (or SIGINT): health turns NOT_SERVING, new edits are refused with UNAVAILABLE,
admitted edits (running or queued) get `grace_seconds` to finish, the server lingers until
`shutdown_linger_seconds` after the signal (still answering UNAVAILABLE), then it stops and
the process exits 0.

Health follows the score backend: a watcher re-checks its readiness every
`health_poll_seconds` (Triton down or a model unloaded: NOT_SERVING; back: SERVING), so
load balancers route around a replica whose Triton is gone, without restarting it. The
health service name `liveness` only says that this process answers (SERVING until shutdown):
a liveness probe must not restart every replica because Triton is down.

The HTTP/JSON door (service/transport/http/, `http_port`) runs in the same event loop, through
the same call pipeline (service/pipeline/calls.py) and handlers; while draining its /healthz
says 503, and it closes after the gRPC port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sdedit.v1 import sdedit_pb2, sdedit_pb2_grpc
from service.backends.registry import load_registry
from service.cache import build_cache
from service.config import Settings, SettingsError, redact_url
from service.jobs import JobManager, build_job_store
from service.jobs.webhooks import Webhooks, secret_source
from service.metrics import Metrics
from service.pipeline.calls import SUBMIT_EDIT, CallPipeline
from service.pipeline.editing import EditService
from service.pipeline.streams import StreamSlots
from service.tenancy.auth import Gate
from service.tenancy.quotas import MemoryQuotaStore, Quotas, RedisQuotaStore
from service.tenancy.tenants import TokensFile, TokensFileError
from service.tls import SSLContextFiles, is_loopback, server_credentials
from service.transport.grpc.interceptor import StatusInterceptor
from service.transport.grpc.jobs import ProtoJobCodec
from service.transport.grpc.servicer import ImageEditorServicer
from service.transport.http import HttpDoor

log = logging.getLogger(__name__)


class EndedCallFilter(logging.Filter):
    """gRPC's aio server logs a traceback (ExecuteBatchError) when it cannot send a response
    because the call has already ended: its deadline passed or the client left just as the
    handler returned. The client has its status already; this is one line, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and type(record.exc_info[1]).__name__ == "ExecuteBatchError":
            record.msg, record.args = "a response was not sent: its call had ended (deadline passed or client left)", ()
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.INFO, "INFO"
        return True


logging.getLogger("grpc._cython.cygrpc").addFilter(EndedCallFilter())
SERVICE_NAME = sdedit_pb2.DESCRIPTOR.services_by_name["ImageEditor"].full_name
LIVENESS = "liveness"  # a health name for liveness probes: independent of the backend
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    service: EditService
    health: health.aio.HealthServicer
    settings: Settings
    metrics: Metrics
    metrics_port: int | None = None  # None: no /metrics endpoint
    jobs: JobManager | None = None
    watcher: asyncio.Task | None = None
    gate: Gate | None = None  # the interceptor's tenant policy
    health_server: grpc.aio.Server | None = None  # --health-port: plaintext, grpc.health.v1 only
    health_port: int | None = None
    http: HttpDoor | None = None  # --http-port: the HTTP/JSON door
    http_port: int | None = None
    serving: bool = False  # what grpc.health.v1 says for the whole server (the HTTP door's /healthz)

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "[::]", "::") else self.settings.host
        return f"{host}:{self.port}"

    async def set_health(self, serving: bool) -> None:
        self.serving = serving
        for name in ("", SERVICE_NAME):
            await self.health.set(name, SERVING if serving else NOT_SERVING)

    async def stop_at_once(self) -> None:
        """Stops what start_server started, with no drain (a port could not be bound)."""
        await self.server.stop(0)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.http is not None:
            await self.http.stop()
        if self.jobs is not None:
            await self.jobs.aclose()
        await self.service.aclose()
        self.metrics.close()

    async def drain_and_stop(self, grace: float | None = None) -> bool:
        """Graceful shutdown; returns whether every admitted edit finished in time."""
        grace = self.settings.grace_seconds if grace is None else grace
        started = time.monotonic()
        if self.watcher is not None:
            self.watcher.cancel()
        self.serving = False
        await self.health.enter_graceful_shutdown()
        self.service.admission.start_draining()
        log.info("draining: %d edits in flight, up to %.0f s", self.service.admission.in_flight, grace)
        finished = await self.service.admission.wait_idle(grace)
        if not finished:
            log.warning("grace period over with %d edits unfinished; cancelling them", self.service.admission.in_flight)
        # Linger before closing: new calls get UNAVAILABLE (retryable) from admission while
        # load balancers see NOT_SERVING and move away. Closing the server makes gRPC cancel the
        # calls it has received but not yet handed to us (CANCELLED), so close as late as we may.
        linger = min(self.settings.shutdown_linger_seconds, grace) - (time.monotonic() - started)
        if finished and linger > 0:
            await asyncio.sleep(linger)
        await self.server.stop(grace=max(0.0, grace - (time.monotonic() - started)) if finished else 0)
        if self.http is not None:
            await self.http.stop()
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.jobs is not None:
            await self.jobs.aclose()
        await self.service.aclose()
        self.metrics.close()
        return finished


def server_options(settings: Settings) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a busy port is an error, not a silent second server
    ]
    if settings.max_connection_age_seconds > 0:
        # GOAWAY after this age (gRPC adds +-10% jitter): clients reconnect, through the
        # Service, to any replica. Calls in flight keep their connection until they end
        # (the age grace is left unbounded; each edit has its own deadline).
        options.append(("grpc.max_connection_age_ms", round(settings.max_connection_age_seconds * 1000)))
    return options


async def start_server(settings: Settings) -> RunningServer:
    registry = await asyncio.to_thread(load_registry, settings)
    metrics = Metrics()  # a registry per server: in-process test servers never share one
    service = EditService(settings, registry, build_cache(settings), metrics)
    await log_cache(service, settings)
    warn_if_open(settings)
    try:
        gate = build_gate(settings, service, metrics)
        webhooks = Webhooks(settings, secret_source(settings, gate.tokens), metrics)
    except (TokensFileError, SettingsError):
        await service.aclose()
        raise
    jobs = JobManager(settings, build_job_store(settings), service, ProtoJobCodec(), webhooks,
                      tenant_of=gate.tokens.tenant if gate.tokens is not None else None, observer=metrics,
                      hold=gate.hold)
    calls = CallPipeline(gate, service.plan, prechecks={
        # a SubmitEdit whose webhook URL will be refused is refused before its work is charged
        SUBMIT_EDIT: lambda call: jobs.check_webhook(call.job.webhook_url, call.tenant.name)},
        streams=StreamSlots(settings.max_event_streams, settings.max_event_streams_per_tenant))
    server = grpc.aio.server(interceptors=[StatusInterceptor(metrics, calls)], options=server_options(settings))
    servicer = ImageEditorServicer(service, jobs)
    health_servicer = health.aio.HealthServicer()
    server, port = grpc_server(settings, metrics, calls, servicer, health_servicer)
    await server.start()
    running = RunningServer(server, port, service, health_servicer, settings, metrics, gate=gate, jobs=jobs)
    try:
        await start_side_ports(running, servicer, calls)
    except OSError:  # a port is taken: stop what started
        await running.stop_at_once()
        raise
    await jobs.start()
    log.info("jobs: %s, %d worker(s)", jobs.kind, settings.job_workers)
    await health_servicer.set(LIVENESS, SERVING)
    serving = await asyncio.to_thread(service.registry.ready)
    await running.set_health(serving)
    running.watcher = asyncio.create_task(watch_backend(running, serving), name="health-watcher")
    return running


def grpc_server(settings: Settings, metrics: Metrics, calls: CallPipeline, servicer: ImageEditorServicer,
                health_servicer: health.aio.HealthServicer) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with its services (ImageEditor, health, reflection) on the port bound."""
    server = grpc.aio.server(interceptors=[StatusInterceptor(metrics, calls)], options=server_options(settings))
    sdedit_pb2_grpc.add_ImageEditorServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert_file:
        port = server.add_secure_port(address, server_credentials(
            Path(settings.tls_cert_file), Path(settings.tls_key_file),
            Path(settings.tls_client_ca_file) if settings.tls_client_ca_file else None))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.port}")
    return server, port


async def start_side_ports(running: RunningServer, servicer: ImageEditorServicer, calls: CallPipeline) -> None:
    """The metrics, health and HTTP ports that are on (each raises OSError when it cannot bind)."""
    settings = running.settings
    if settings.metrics_port >= 0:
        running.metrics_port = running.metrics.serve(settings.metrics_host, settings.metrics_port)
    if settings.health_port >= 0:
        running.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(running.health, running.health_server)
        running.health_port = running.health_server.add_insecure_port(f"{settings.host}:{settings.health_port}")
        if running.health_port == 0:
            raise OSError(f"cannot bind the health port {settings.host}:{settings.health_port}")
        await running.health_server.start()
    if settings.http_port >= 0:
        running.http = HttpDoor(settings, servicer, calls, lambda: running.serving, running.metrics, http_ssl_context(settings))
        running.http_port = await running.http.start()


def http_ssl_context(settings: Settings):
    """The HTTP port's TLS: the gRPC port's files, followed when they change (None: plaintext)."""
    if not settings.tls_cert_file:
        return None
    return SSLContextFiles(Path(settings.tls_cert_file), Path(settings.tls_key_file),
                           Path(settings.tls_client_ca_file) if settings.tls_client_ca_file else None).initial()


def build_gate(settings: Settings, service: EditService, metrics: Metrics) -> Gate:
    """The interceptor's policy: tokens and tenants (none without --auth-tokens-file)."""
    tokens = TokensFile(settings.auth_tokens_file) if settings.auth_tokens_file else None
    if tokens is not None:
        metrics.describe_tenants(t.name for t in tokens.tenants)
        log.info("authentication: %d tenant(s) from %s%s", len(tokens.tenants), settings.auth_tokens_file,
                 "; reflection and ListModels open" if settings.open_discovery else "")
    quotas = None
    if tokens is not None:  # a reload may add limits: the quotas are always there with tenants
        store = getattr(service.cache.store if service.cache is not None else None, "client", None)
        quotas = Quotas(RedisQuotaStore(store, settings.cache_key_prefix) if store is not None else MemoryQuotaStore(),
                        fail_open=settings.quota_fail_open, lease_seconds=settings.quota_lease_seconds,
                        timeout=settings.redis_timeout_seconds, observer=metrics)
        log.info("tenant quotas: %s", "in redis, shared by the replicas" if store is not None else
                 "in memory, this replica's own")
    return Gate(tokens, open_discovery=settings.open_discovery, default_model=service.registry.default,
                observer=metrics, quotas=quotas)


def warn_if_open(settings: Settings) -> None:
    """Says loudly what a listener beyond loopback lacks: TLS, tokens."""
    if is_loopback(settings.host):
        return
    missing = [what for what, on in (("TLS (--tls-cert-file)", settings.tls_cert_file),
                                     ("authentication (--auth-tokens-file)", settings.auth_tokens_file)) if not on]
    if missing:
        ports = f"{settings.port} (gRPC)" + (f" and {settings.http_port} (HTTP)" if settings.http_port >= 0 else "")
        log.warning("SECURITY: listening on %s port %s without %s: %s", settings.host, ports,
                    " and without ".join(missing),
                    "anyone who reaches these ports can use them" if not settings.auth_tokens_file
                    else "tokens and images cross the network in the clear")


async def log_cache(service: EditService, settings: Settings) -> None:
    """Says which cache runs; an unreachable Redis is not fatal (the cache fails open)."""
    if service.cache is None:
        log.info("result cache: off (--cache none): every edit runs, request_id is not remembered")
    elif settings.cache == "memory":
        log.info("result cache: in memory, %d bytes, TTL %g s", settings.cache_memory_bytes, settings.cache_ttl_seconds)
    elif await service.cache.available():
        log.info("result cache: redis at %s, TTL %g s", redact_url(settings.redis_url), settings.cache_ttl_seconds)
    else:
        log.warning("result cache: redis at %s is not reachable now; edits run uncached until it is",
                    redact_url(settings.redis_url))


async def watch_backend(running: RunningServer, serving: bool) -> None:
    """Keeps grpc.health.v1 in step with the backend's readiness until draining starts."""
    while True:
        await asyncio.sleep(running.settings.health_poll_seconds)
        try:
            ready = await asyncio.to_thread(running.service.registry.ready)
        except Exception:  # a broken probe means not ready; the watcher must live on
            log.exception("readiness check failed")
            ready = False
        if ready != serving and not running.service.admission.draining:
            log.warning("score backend %s: health %s", "ready again" if ready else "not ready",
                        "SERVING" if ready else "NOT_SERVING")
            await running.set_health(ready)
            serving = ready


async def serve(settings: Settings) -> int:
    """Runs until SIGTERM/SIGINT, then drains. Returns the process exit code."""
    running = await start_server(settings)
    log.info("sdedit serving on %s (gRPC port %d, HTTP port %s, metrics port %s, default model %s)",
             running.address, running.port, running.http_port, running.metrics_port, settings.default_model)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown requested")
    await running.drain_and_stop()
    log.info("stopped")
    return 0
