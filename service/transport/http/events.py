"""Server-Sent Events: a job's EditEvents as an event stream (GET /v1/jobs/{id}/events).

An error before the first event (within FIRST_EVENT_WAIT: an unknown job) is still a JSON
answer with its HTTP code; after it, an `event: error` message ends the stream. A quiet stream
gets a comment every `keepalive_seconds`, so proxies keep it open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from google.protobuf import json_format

from service.transport.grpc.status import status_for
from service.transport.http.errors import error_body, http_error, json_dumps

FIRST_EVENT_WAIT = 0.5


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    return response


def event_message(event) -> bytes:
    kind = event.WhichOneof("event") or "progress"
    return f"id: {event.sequence}\nevent: {kind}\ndata: {json_dumps(json_format.MessageToDict(event))}\n\n".encode()


async def stream_events(request: web.Request, events: AsyncIterator, method: str, keepalive_seconds: float) -> web.StreamResponse:
    """Writes `events` (EditEvent messages) as SSE messages until they end or fail."""
    stream = events.__aiter__()
    response: web.StreamResponse | None = None
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(stream.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=FIRST_EVENT_WAIT if response is None else keepalive_seconds)
            if not done:
                if response is None:
                    response = await open_stream(request)
                else:
                    await response.write(b": keep-alive\n\n")
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                break
            except Exception as exc:  # noqa: BLE001 - the job failed or was cancelled, or an error
                status = status_for(exc, method)
                if response is None:
                    raise http_error(status) from None
                await response.write(f"event: error\ndata: {json_dumps(error_body(status))}\n\n".encode())
                break
            if response is None:
                response = await open_stream(request)
            await response.write(event_message(event))
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(Exception):
            await stream.aclose()
    if response is None:  # ended before the first event: an empty stream
        response = await open_stream(request)
    await response.write_eof()
    return response
