"""The HTTP/JSON door (docs/http.md): aiohttp in the gRPC server's own event loop.

A route that does a gRPC method's work (routes.py names it) goes through the same call
pipeline as that method (service/pipeline/calls.py): the `Authorization` header is checked as
that method's metadata, the body or query is parsed into the method's request message
(bodies.py), the edit is planned and its quota leased once, and the ImageEditorServicer's
handler of that name answers the admitted Call. Errors go through the gRPC status mapping
(service/transport/grpc/status.py status_for), then become an HTTP code and the AIP-193 JSON
error (errors.py). Job events are Server-Sent Events (events.py); the rest is pages.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger
from google.protobuf import json_format
from google.rpc import code_pb2

from sdedit.v1 import sdedit_pb2 as pb
from service.pipeline.calls import Call, CallPipeline, Parsed
from service.transport.grpc.convert import parse_call
from service.transport.grpc.servicer import ImageEditorServicer
from service.transport.grpc.status import status_for
from service.transport.http import bodies, origins, pages
from service.transport.http.errors import HttpError, error_body, http_error, json_dumps, transport_error
from service.transport.http.events import stream_events
from service.transport.http.routes import ROUTES, Route

KEEPALIVE_SECONDS = 15.0  # an SSE comment this often while a job is quiet
STOP_SECONDS = 2.0  # on stop: how long open requests (event streams) get before they are cut


class ProtocolLog(logging.LoggerAdapter):
    """aiohttp's server log, less the traceback it writes for every request it cannot parse (a
    bad header byte, a line too long: the caller's mistake, answered 400): one line instead, at
    most once per `every` seconds, with how many more came meanwhile. Any other error keeps its
    traceback."""

    def __init__(self, logger: logging.Logger = server_logger, every: float = 10.0):
        super().__init__(logger, {})
        self.every, self._last, self._quiet = every, -every, 0

    def log(self, level, msg, *args, exc_info=None, **kwargs) -> None:
        if not isinstance(exc_info, HttpProcessingError):
            super().log(level, msg, *args, exc_info=exc_info, **kwargs)
            return
        now = time.monotonic()
        if now - self._last < self.every:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last one)" if self._quiet else ""
        self._last, self._quiet = now, 0
        reason = str(exc_info.message).strip().splitlines()[0][:120] if exc_info.message else type(exc_info).__name__
        super().log(logging.INFO, "a malformed HTTP request, answered %d: %s%s", exc_info.code, reason, more)


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json_dumps(body), status=status, content_type="application/json", headers=headers)


def error_response(error: HttpError) -> web.Response:
    return json_response(error_body(error.status, error.http_code), error.http_code, error.headers)


class HttpDoor:
    """The aiohttp application and its listener; start() returns the port bound."""

    def __init__(self, settings, servicer: ImageEditorServicer, calls: CallPipeline, serving: Callable[[], bool],
                 metrics=None, ssl_context=None):
        """serving(): whether grpc.health.v1 says SERVING for the server (/healthz)."""
        self.settings = settings
        self.servicer = servicer
        self.calls = calls
        self.serving = serving
        self.metrics = metrics
        self.ssl_context = ssl_context
        self.keepalive_seconds = KEEPALIVE_SECONDS
        self.static_dir = pages.STATIC_DIR
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._openapi = pages.OpenApiDocument()
        self.origins = origins.OriginPolicy(settings.host, settings.http_allowed_origins)

    # --- the application ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_bytes, middlewares=[self._middleware])
        app.on_response_prepare.append(origins.add_headers)
        for route in ROUTES:
            app.router.add_route(route.method, route.router_path or route.path, self._handler(route), name=route.handler)
        return app

    def _handler(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        answer = getattr(self, route.handler)

        async def handle(request: web.Request) -> web.StreamResponse:
            return await answer(request, route)

        return handle

    async def start(self) -> int:
        bodies.quiet_multipart_warnings()
        self.runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, handler_cancellation=True,
                                    shutdown_timeout=STOP_SECONDS, logger=ProtocolLog())
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.http_port, ssl_context=self.ssl_context,
                           reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise OSError(f"cannot bind the HTTP port {self.settings.host}:{self.settings.http_port}: {exc}") from exc
        self.port = self.runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        """Every answer: the Origin and Host policy (origins.py) first, errors as JSON, and counted
        (route template, code) with its latency."""
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        code = 499  # the client went away (the handler was cancelled)
        try:
            try:
                refused = self.origins.check(request)
                if refused is not None:
                    raise refused
                response = await handler(request)
            except HttpError as exc:
                response = error_response(exc)
            except web.HTTPException as exc:  # aiohttp's own: no route, wrong method, body too large
                response = error_response(self._transport(exc, request))
            except Exception as exc:  # noqa: BLE001 - status_for logs it once; the client gets INTERNAL
                response = error_response(http_error(status_for(exc, f"HTTP {request.method} {route}")))
            code = response.status
            return response
        finally:
            if self.metrics is not None:
                self.metrics.http_handled(request.method, route, code, time.perf_counter() - started)

    @staticmethod
    def _transport(exc: web.HTTPException, request: web.Request) -> HttpError:
        if exc.status == 404:
            return transport_error(404, code_pb2.NOT_FOUND, "UNKNOWN_ROUTE", f"no route {request.path[:100]!r}; see /openapi.json")
        if exc.status == 405:
            allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
            error = transport_error(405, code_pb2.UNIMPLEMENTED, "METHOD_NOT_ALLOWED",
                                    f"{request.method} is not allowed on {request.path[:100]!r}; allowed: {', '.join(allowed)}")
            error.headers["Allow"] = ", ".join(allowed)
            return error
        if exc.status == 413 and "form fields" in (exc.text or ""):  # aiohttp's cap on a form's fields
            limit = getattr(request, "client_max_fields", 1000)
            return transport_error(413, code_pb2.RESOURCE_EXHAUSTED, "TOO_MANY_PARTS",
                                   f"the multipart body has more than {limit} parts (an edit has at most 3: "
                                   f"{', '.join(bodies.MULTIPART_PARTS)})", field="body")
        if exc.status == 413:
            return transport_error(413, code_pb2.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE",
                                   f"the request body is larger than --max-request-mib ({request.app._client_max_size >> 20} MiB)")
        return transport_error(exc.status, code_pb2.INVALID_ARGUMENT if exc.status < 500 else code_pb2.INTERNAL,
                               "HTTP_ERROR", exc.reason or "bad request")

    # --- calls, through the call pipeline ------------------------------------------------------

    async def _call(self, request: web.Request, route: Route, build: Callable[[], Awaitable[object]],
                    answer: Callable[[Call], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """The pipeline (token, then parse, plan, rights and quotas), then `answer`; errors -> HttpError."""
        method = route.full_rpc
        timed = any(p.name == "Request-Timeout" for p in route.params)

        async def parse() -> Parsed:
            message = await build()
            return parse_call(method, message, bodies.deadline(request) if timed else None)

        try:
            async with self.calls.call(method, bodies.credentials(request), parse) as call:
                return await answer(call)
        except (HttpError, web.HTTPException):
            raise
        except Exception as exc:  # noqa: BLE001 - the one mapping
            raise http_error(status_for(exc, method)) from None

    async def _unary(self, request: web.Request, route: Route, build: Callable[[], Awaitable[object]]) -> web.StreamResponse:
        async def answer(call: Call) -> web.StreamResponse:
            return json_response(json_format.MessageToDict(await getattr(self.servicer, route.rpc)(call)))

        return await self._call(request, route, build, answer)

    @staticmethod
    def _from_query(request: web.Request, message_type, with_id: bool = False) -> Callable[[], Awaitable[object]]:
        async def build():
            return bodies.parse_message(bodies.query(request, {"id": request.match_info["id"]} if with_id else {}), message_type)

        return build

    # --- the routes ---------------------------------------------------------------------------

    async def edit(self, request: web.Request, route: Route) -> web.StreamResponse:
        return await self._unary(request, route, lambda: bodies.edit_request(request))

    async def submit(self, request: web.Request, route: Route) -> web.StreamResponse:
        return await self._unary(request, route, lambda: bodies.edit_request(request))

    async def list_jobs(self, request: web.Request, route: Route) -> web.StreamResponse:
        return await self._unary(request, route, self._from_query(request, pb.ListJobsRequest))

    async def get_job(self, request: web.Request, route: Route) -> web.StreamResponse:
        return await self._unary(request, route, self._from_query(request, pb.GetJobRequest, with_id=True))

    async def cancel_job(self, request: web.Request, route: Route) -> web.StreamResponse:
        return await self._unary(request, route, self._from_query(request, pb.CancelJobRequest, with_id=True))

    async def list_models(self, request: web.Request, route: Route) -> web.StreamResponse:
        return await self._unary(request, route, self._from_query(request, pb.ListModelsRequest))

    async def watch_job(self, request: web.Request, route: Route) -> web.StreamResponse:
        async def build():
            return bodies.watch_request(request)

        async def answer(call: Call) -> web.StreamResponse:
            return await stream_events(request, self.servicer.WatchJob(call), route.full_rpc, self.keepalive_seconds)

        return await self._call(request, route, build, answer)

    async def healthz(self, request: web.Request, route: Route) -> web.StreamResponse:
        return pages.health_response(self.serving())

    async def openapi(self, request: web.Request, route: Route) -> web.StreamResponse:
        return self._openapi.response()

    async def index(self, request: web.Request, route: Route) -> web.StreamResponse:
        return pages.file_response(self.static_dir, "index.html")

    async def static(self, request: web.Request, route: Route) -> web.StreamResponse:
        return pages.file_response(self.static_dir, request.match_info["name"])
