"""The gRPC server interceptor: every call of every service goes through it.

Requests arrive as bytes and are parsed here (a malformed message is an INVALID_ARGUMENT like
any bad field, counted and logged at most once a minute), inside the call pipeline
(service/pipeline/calls.py: token, then parse, plan, rights and quotas), so ImageEditor's
handlers get the admitted Call. Any exception becomes its status (status.py); each RPC's start
and end (method, type, code, seconds) go to the observer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from service.errors import InvalidArgument
from service.pipeline.calls import SERVICE, CallPipeline, Parsed
from service.transport.grpc.convert import parse_call
from service.transport.grpc.status import abort_with, grpc_code

log = logging.getLogger(__name__)


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
