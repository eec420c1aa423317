"""The HTTP/JSON door (docs/http.md): aiohttp in the gRPC server's own event loop.

A route that does a gRPC method's work goes the gRPC way, through the same objects:
the Gate authenticates the `Authorization` header as that method's metadata, the JSON body
(or the query) is parsed into the method's request message by google.protobuf.json_format,
the Gate admits it (rights on its model, quotas; the lease is released when the call ends),
the tenant is set for the call, and the ImageEditorServicer's method of that name answers,
with a small context (a deadline from `Request-Timeout`; an abort raises). Errors go through
service/transport/grpc/status.py's status_for, then become an HTTP code and the AIP-193 JSON error
(service/transport/http/errors.py). Job events are Server-Sent Events from the servicer's WatchJob.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2

from sdedit.v1 import sdedit_pb2 as pb
from service.errors import InvalidArgument
from service.tenancy.auth import Gate
from service.tenancy.tenants import reset_current_tenant, set_current_tenant
from service.transport.grpc.servicer import ImageEditorServicer
from service.transport.grpc.status import status_for
from service.transport.http.errors import HttpError, error_body, http_error, json_dumps, parse_error_argument, transport_error
from service.transport.http.routes import ROUTES, Route

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
KEEPALIVE_SECONDS = 15.0  # an SSE comment this often while a job is quiet
FIRST_EVENT_WAIT = 0.5  # SSE: errors within this (an unknown job) are still a JSON answer with its code
STOP_SECONDS = 2.0  # on stop: how long open requests (event streams) get before they are cut
SERVING = health_pb2.HealthCheckResponse.SERVING
_REQUEST_TYPES = {"sdedit.v1.EditRequest": pb.EditRequest}
_MULTIPART_PARTS = ("request", "image", "mask")


class HttpAbort(Exception):
    """The servicer ended the call with a status (context.abort_with_status)."""

    def __init__(self, status: status_pb2.Status):
        super().__init__(status.message)
        self.status = status


class HttpContext:
    """What the servicer's methods use of a grpc.aio.ServicerContext, for an HTTP call."""

    def __init__(self, deadline: float | None = None, metadata: tuple = ()):
        self.deadline = deadline  # time.monotonic() seconds
        self.metadata = metadata

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def invocation_metadata(self) -> tuple:
        return self.metadata

    async def abort_with_status(self, status) -> None:
        """status: a grpc.Status from grpc_status.rpc_status.to_status (its details in the
        trailing metadata)."""
        for key, value in status.trailing_metadata or ():
            if key == "grpc-status-details-bin":
                raise HttpAbort(status_pb2.Status.FromString(value))
        raise HttpAbort(status_pb2.Status(code=status.code.value[0], message=status.details or ""))

    async def abort(self, code, details: str = "") -> None:
        raise HttpAbort(status_pb2.Status(code=code.value[0], message=details))

    def set_code(self, code) -> None:  # grpc.health's Check, for an unknown service
        pass

    def set_details(self, details: str) -> None:
        pass


def to_json(message) -> dict:
    return json_format.MessageToDict(message)


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json_dumps(body), status=status, content_type="application/json", headers=headers)


def error_response(error: HttpError) -> web.Response:
    return json_response(error_body(error.status, error.http_code), error.http_code, error.headers)


def _parse(data: dict, message_type, root: str = ""):
    try:
        return json_format.ParseDict(data, message_type())
    except json_format.ParseError as exc:
        raise parse_error_argument(exc, root) from None


def _json_object(raw: bytes, where: str) -> dict:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(where, f"is not JSON: {exc}"[:200]) from None
    if not isinstance(data, dict):
        raise InvalidArgument(where, "must be a JSON object (an EditRequest)")
    return data


class HttpDoor:
    """The aiohttp application and its listener; start() returns the port bound."""

    def __init__(self, settings, servicer: ImageEditorServicer, gate: Gate, health, metrics=None, ssl_context=None):
        self.settings = settings
        self.servicer = servicer
        self.gate = gate
        self.health = health
        self.metrics = metrics
        self.ssl_context = ssl_context
        self.keepalive_seconds = KEEPALIVE_SECONDS
        self.static_dir = STATIC_DIR
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._openapi: bytes | None = None

    # --- the application ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_mib << 20, middlewares=[self._middleware])
        for route in ROUTES:
            app.router.add_route(route.method, route.router_path or route.path, self._handler(route), name=route.handler)
        return app

    def _handler(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        answer = getattr(self, route.handler)

        async def handle(request: web.Request) -> web.StreamResponse:
            return await answer(request, route)

        return handle

    async def start(self) -> int:
        self.runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, handler_cancellation=True,
                                    shutdown_timeout=STOP_SECONDS)
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
        """Every answer: errors as JSON, and counted (route template, code) with its latency."""
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        code = 499  # the client went away (the handler was cancelled)
        try:
            try:
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
        if exc.status == 413:
            return transport_error(413, code_pb2.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE",
                                   f"the request body is larger than --max-request-mib ({request.app._client_max_size >> 20} MiB)")
        return transport_error(exc.status, code_pb2.INVALID_ARGUMENT if exc.status < 500 else code_pb2.INTERNAL,
                               "HTTP_ERROR", exc.reason or "bad request")

    # --- the gRPC way -------------------------------------------------------------------------

    def _metadata(self, request: web.Request) -> tuple:
        authorization = request.headers.get("Authorization")
        return (("authorization", authorization),) if authorization is not None else ()

    async def _call(self, request: web.Request, route: Route, build: Callable[[], Awaitable[object]],
                    answer: Callable[[object, HttpContext], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Token, then parse, then rights and quotas, then the servicer; any error -> HttpError."""
        method = route.full_rpc
        lease = tenant_token = None
        try:
            metadata = self._metadata(request)
            tenant = self.gate.authenticate(method, metadata)
            message = await build()
            context = HttpContext(self._deadline(request) if any(p.name == "Request-Timeout" for p in route.params) else None,
                                  metadata)
            lease = await self.gate.admit(tenant, method, message)
            tenant_token = set_current_tenant(tenant)
            return await answer(message, context)
        except (HttpError, web.HTTPException):
            raise
        except HttpAbort as exc:
            raise http_error(exc.status) from None
        except Exception as exc:  # noqa: BLE001 - the one mapping
            raise http_error(status_for(exc, method)) from None
        finally:
            if lease is not None:
                lease.release()
            if tenant_token is not None:
                reset_current_tenant(tenant_token)

    @staticmethod
    def _deadline(request: web.Request) -> float | None:
        raw = request.headers.get("Request-Timeout")
        if raw is None:
            return None
        try:
            seconds = float(raw)
        except ValueError:
            seconds = float("nan")
        if not 0 < seconds < 1e9:
            raise InvalidArgument("Request-Timeout", f"must be a number of seconds > 0, got {raw[:32]!r}")
        return time.monotonic() + seconds

    async def _unary(self, request: web.Request, route: Route, build: Callable[[], Awaitable[object]]) -> web.StreamResponse:
        async def answer(message, context):
            return json_response(to_json(await getattr(self.servicer, route.rpc)(message, context)))

        return await self._call(request, route, build, answer)

    # --- request bodies -----------------------------------------------------------------------

    async def _edit_request(self, request: web.Request) -> pb.EditRequest:
        if request.content_type == "multipart/form-data":
            return await self._multipart(request)
        if request.content_type not in ("application/json", "application/octet-stream", "") and request.body_exists:
            raise transport_error(415, code_pb2.INVALID_ARGUMENT, "UNSUPPORTED_MEDIA_TYPE",
                                  f"send application/json or multipart/form-data, not {request.content_type[:64]!r}",
                                  field="Content-Type")
        return _parse(_json_object(await request.read(), "body"), pb.EditRequest)

    async def _multipart(self, request: web.Request) -> pb.EditRequest:
        try:
            form = await request.post()
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed multipart body
            raise InvalidArgument("body", f"is not a valid multipart/form-data body: {exc}"[:200]) from None
        unknown = [name for name in form if name not in _MULTIPART_PARTS]
        if unknown:
            raise InvalidArgument(unknown[0][:64], "is not a part of an edit (parts: request, image, mask)")
        parts: dict[str, bytes] = {}
        for name in _MULTIPART_PARTS:
            values = form.getall(name, [])
            if len(values) > 1:
                raise InvalidArgument(name, "is given more than once")
            if values:
                value = values[0]
                if isinstance(value, web.FileField):
                    parts[name] = value.file.read()
                else:  # a field without a file name: text, or bytes with a content type of its own
                    parts[name] = value.encode() if isinstance(value, str) else bytes(value)
        message = _parse(_json_object(parts.pop("request", b""), "request"), pb.EditRequest, "")
        for name, data in parts.items():
            if getattr(message, name):
                raise InvalidArgument(name, "is given both in the request part and as a part of its own")
            setattr(message, name, data)
        return message

    def _query(self, request: web.Request, extra: dict) -> dict:
        data = dict(extra)
        for key in request.query:
            values = request.query.getall(key)
            if len(values) > 1:
                raise InvalidArgument(key[:64], "is given more than once")
            data[key] = values[0]
        return data

    # --- the routes ---------------------------------------------------------------------------

    async def edit(self, request: web.Request, route: Route) -> web.StreamResponse:
        return await self._unary(request, route, lambda: self._edit_request(request))

    async def submit(self, request: web.Request, route: Route) -> web.StreamResponse:
        return await self._unary(request, route, lambda: self._edit_request(request))

    async def list_jobs(self, request: web.Request, route: Route) -> web.StreamResponse:
        async def build():
            return _parse(self._query(request, {}), pb.ListJobsRequest)

        return await self._unary(request, route, build)

    async def get_job(self, request: web.Request, route: Route) -> web.StreamResponse:
        async def build():
            return _parse(self._query(request, {"id": request.match_info["id"]}), pb.GetJobRequest)

        return await self._unary(request, route, build)

    async def cancel_job(self, request: web.Request, route: Route) -> web.StreamResponse:
        async def build():
            return _parse(self._query(request, {"id": request.match_info["id"]}), pb.CancelJobRequest)

        return await self._unary(request, route, build)

    async def list_models(self, request: web.Request, route: Route) -> web.StreamResponse:
        async def build():
            return _parse(self._query(request, {}), pb.ListModelsRequest)

        return await self._unary(request, route, build)

    async def watch_job(self, request: web.Request, route: Route) -> web.StreamResponse:
        async def build():
            data = self._query(request, {"id": request.match_info["id"]})
            last = request.headers.get("Last-Event-ID")
            if last is not None:
                if not last.strip().isdigit() or len(last.strip()) > 19:
                    raise InvalidArgument("Last-Event-ID", f"must be an event id (a sequence number), got {last[:32]!r}")
                data["afterSequence"] = last.strip()
            return _parse(data, pb.WatchJobRequest)

        async def answer(message, context):
            return await self._stream_events(request, self.servicer.WatchJob(message, context), route)

        return await self._call(request, route, build, answer)

    async def _stream_events(self, request: web.Request, events, route: Route) -> web.StreamResponse:
        """EditEvents as SSE messages. An error before the first event (within FIRST_EVENT_WAIT)
        is a JSON answer with its HTTP code; after it, an `event: error` message."""
        stream = events.__aiter__()
        response: web.StreamResponse | None = None
        pending: asyncio.Future | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(stream.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=FIRST_EVENT_WAIT if response is None else self.keepalive_seconds)
                if not done:
                    if response is None:
                        response = await self._open_stream(request)
                    else:
                        await response.write(b": keep-alive\n\n")
                    continue
                finished, pending = pending, None
                try:
                    event = finished.result()
                except StopAsyncIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - an abort (failed, cancelled) or an error
                    status = exc.status if isinstance(exc, HttpAbort) else status_for(exc, route.full_rpc)
                    if response is None:
                        raise http_error(status) from None
                    await response.write(f"event: error\ndata: {json_dumps(error_body(status))}\n\n".encode())
                    break
                if response is None:
                    response = await self._open_stream(request)
                kind = event.WhichOneof("event") or "progress"
                await response.write(f"id: {event.sequence}\nevent: {kind}\ndata: {json_dumps(to_json(event))}\n\n".encode())
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with contextlib.suppress(Exception):
                await stream.aclose()
        if response is None:  # ended before the first event: an empty stream
            response = await self._open_stream(request)
        await response.write_eof()
        return response

    @staticmethod
    async def _open_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        return response

    async def healthz(self, request: web.Request, route: Route) -> web.StreamResponse:
        answer = await self.health.Check(health_pb2.HealthCheckRequest(service=""), HttpContext())
        serving = answer.status == SERVING
        return json_response({"status": "SERVING" if serving else "NOT_SERVING"}, 200 if serving else 503)

    async def openapi(self, request: web.Request, route: Route) -> web.StreamResponse:
        if self._openapi is None:
            from service.transport.http.openapi import openapi_document

            self._openapi = json_dumps(openapi_document()).encode()
        return web.Response(body=self._openapi, content_type="application/json")

    async def index(self, request: web.Request, route: Route) -> web.StreamResponse:
        return self._file("index.html")

    async def static(self, request: web.Request, route: Route) -> web.StreamResponse:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.StreamResponse:
        root = self.static_dir.resolve()
        path = (root / name).resolve()
        if root not in path.parents or not path.is_file():
            raise transport_error(404, code_pb2.NOT_FOUND, "NO_SUCH_FILE", f"no file {name[:100]!r} under /static/")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})
