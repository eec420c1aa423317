"""The one place that maps service errors to gRPC status codes (a server interceptor).

    InvalidArgument   -> INVALID_ARGUMENT, with google.rpc.BadRequest naming the field
    NotFound          -> NOT_FOUND (a job unknown or expired)
    RequestIdConflict -> ALREADY_EXISTS (a request_id reused for a different request)
    Unauthenticated   -> UNAUTHENTICATED        PermissionDenied -> PERMISSION_DENIED
    ResourceExhausted -> RESOURCE_EXHAUSTED (QuotaExceeded: with google.rpc.RetryInfo)
    Unavailable / BackendError -> UNAVAILABLE
    DeadlineExceeded  -> DEADLINE_EXCEEDED      Cancelled -> CANCELLED
    anything else     -> INTERNAL, logged once with the method name (details stay in the log)

Every status carries a google.rpc.ErrorInfo with a stable reason and domain "sdedit.v1".

It is also the one interceptor for the cross-cutting policy (service/tenancy/auth.py): before a
handler runs, the caller's token is checked (before the request is even parsed), then its
rights on the request and its quotas; the tenant reaches the handler as plain data
(service.tenancy.tenants.current_tenant()), never the token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RequestIdConflict,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from service.pipeline.calls import SERVICE, CallPipeline, Parsed
from service.transport.grpc.convert import parse_call

log = logging.getLogger(__name__)
ERROR_DOMAIN = "sdedit.v1"

_CODES: list[tuple[type[ServiceError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (RequestIdConflict, code_pb2.ALREADY_EXISTS),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
    (NotFound, code_pb2.NOT_FOUND),
    (ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (Unavailable, code_pb2.UNAVAILABLE),
    (DeadlineExceeded, code_pb2.DEADLINE_EXCEEDED),
    (Cancelled, code_pb2.CANCELLED),
]


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, EndedWithStatus):
        return _STATUS_CODES[exc.status.code]
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return _STATUS_CODES[code]
    return grpc.StatusCode.INTERNAL


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class EndedWithStatus(Exception):
    """A call that ends with a status already encoded (a failed or cancelled job's own)."""

    def __init__(self, status: status_pb2.Status):
        super().__init__(status.message)
        self.status = status


def status_for(exc: BaseException, method: str) -> status_pb2.Status:
    if isinstance(exc, EndedWithStatus):
        return exc.status
    code = next((c for kind, c in _CODES if isinstance(exc, kind)), code_pb2.INTERNAL)
    if code == code_pb2.INTERNAL:
        log.exception("internal error in %s", method, exc_info=exc)
        message, reason = "internal error; the service logged the details", "INTERNAL"
    else:
        message, reason = str(exc), exc.reason  # type: ignore[attr-defined]
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata={"method": method}))
    details.append(info)
    if isinstance(exc, InvalidArgument):
        bad = any_pb2.Any()
        bad.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.description)
        ]))
        details.append(bad)
    if isinstance(exc, QuotaExceeded):
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, round(exc.retry_after * 1000)))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    return status_pb2.Status(code=code, message=message, details=details)


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    await context.abort_with_status(rpc_status.to_status(status_for(exc, method)))


class RpcObserver(Protocol):
    """Told when each RPC starts and ends (service/metrics/rpc.py counts them)."""

    def rpc_started(self, method: str, rpc_type: str) -> None: ...

    def rpc_handled(self, method: str, rpc_type: str, code: grpc.StatusCode, seconds: float) -> None: ...


UNARY, SERVER_STREAM = "unary", "server_stream"


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: maps exceptions to statuses; reports each RPC's start and its end
    (method, type, code, seconds) to the observer."""

    def __init__(self, observer: RpcObserver | None, calls: CallPipeline):
        self._observer = observer
        self._calls = calls

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        # Requests arrive as bytes and are parsed inside the wrapper, so a malformed message
        # is an INVALID_ARGUMENT like any bad field, counted and logged by us (gRPC's own
        # deserializer would answer UNKNOWN and log a traceback for each one).
        parse = _parser(handler.request_deserializer, method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, parse),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, parse),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None and not self._calls.gate.is_open(method):
            return grpc.stream_stream_rpc_method_handler(  # reflection
                self._wrap_bidi(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _start(self, method: str, rpc_type: str) -> float:
        if self._observer is not None:
            self._observer.rpc_started(method, rpc_type)
        return asyncio.get_running_loop().time()

    def _observe(self, method: str, rpc_type: str, code: grpc.StatusCode, started: float) -> None:
        if self._observer is not None:
            self._observer.rpc_handled(method, rpc_type, code, asyncio.get_running_loop().time() - started)

    def _ended(self, method: str, rpc_type: str, started: float, exc: BaseException, context) -> None:
        """Reports a call that ended by an exception: before its status reaches the client."""
        if not isinstance(exc, Exception):  # CancelledError, GeneratorExit: the client went away
            code = grpc.StatusCode.CANCELLED
        elif _is_abort(exc):
            code = context.code() or grpc.StatusCode.UNKNOWN
        else:
            code = grpc_code(exc)
        self._observe(method, rpc_type, code, started)

    def _call(self, method: str, raw: bytes, context, parse):
        """The call pipeline on this call: token, then parse, then plan, rights and quotas."""
        async def parsed() -> Parsed:
            remaining = context.time_remaining()
            return parse_call(method, parse(raw), None if remaining is None else time.monotonic() + remaining)

        return self._calls.call(method, context.invocation_metadata(), parsed)

    @staticmethod
    def _request(method: str, call):
        """ImageEditor's handlers take the admitted Call; other services (health) their message."""
        return call if method.startswith(SERVICE) else call.message

    def _wrap_unary(self, behavior, method: str, parse):
        async def wrapper(request, context):
            started = self._start(method, UNARY)
            try:
                async with self._call(method, request, context, parse) as call:
                    response = await behavior(self._request(method, call), context)
            except BaseException as exc:
                self._ended(method, UNARY, started, exc, context)
                if isinstance(exc, Exception) and not _is_abort(exc):
                    await abort_with(context, exc, method)
                raise
            self._observe(method, UNARY, grpc.StatusCode.OK, started)
            return response

        return wrapper

    def _wrap_stream(self, behavior, method: str, parse):
        async def wrapper(request, context):
            started = self._start(method, SERVER_STREAM)
            try:
                async with self._call(method, request, context, parse) as call:
                    async for item in behavior(self._request(method, call), context):
                        yield item
            except BaseException as exc:
                self._ended(method, SERVER_STREAM, started, exc, context)
                if isinstance(exc, Exception) and not _is_abort(exc):
                    await abort_with(context, exc, method)
                raise
            self._observe(method, SERVER_STREAM, grpc.StatusCode.OK, started)

        return wrapper

    def _wrap_bidi(self, behavior, method: str):
        """Streaming requests (server reflection): the token only; not counted in the RPC metrics."""
        async def wrapper(requests, context):
            try:
                self._calls.authenticate(method, context.invocation_metadata())
            except Exception as exc:  # noqa: BLE001 - Unauthenticated / PermissionDenied
                await abort_with(context, exc, method)
                return
            async for item in behavior(requests, context):
                yield item

        return wrapper


MALFORMED_LOG_SECONDS = 60.0  # at most one log line per interval for malformed requests
_malformed = {"last": -MALFORMED_LOG_SECONDS, "since": 0}


def _parser(deserializer: Callable[[bytes], object] | None, method: str) -> Callable[[bytes], object]:
    def parse(data: bytes) -> object:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, and UnicodeDecodeError on some protobuf builds
            _log_malformed(method, len(data))
            raise InvalidArgument("request", "is not a valid protobuf message of this method's request type "
                                             "(malformed bytes or a string field with invalid UTF-8)") from exc

    return parse


def _log_malformed(method: str, size: int) -> None:
    now = time.monotonic()
    _malformed["since"] += 1
    if now - _malformed["last"] >= MALFORMED_LOG_SECONDS:
        log.warning("malformed request to %s (%d bytes): INVALID_ARGUMENT; %d such requests in the last %.0f s",
                    method, size, _malformed["since"], MALFORMED_LOG_SECONDS)
        _malformed["last"], _malformed["since"] = now, 0


def _is_abort(exc: BaseException) -> bool:
    """context.abort() raises this to end the RPC: it is a status already set, not an error."""
    return type(exc).__name__ == "AbortError"
