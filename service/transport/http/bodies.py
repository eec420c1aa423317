"""Request bodies, queries and headers of the HTTP door, parsed into sdedit.v1 messages.

A JSON body (or a query) becomes the route's request message by google.protobuf.json_format;
an edit may also come as multipart/form-data, its images as parts of their own. Every problem
is an InvalidArgument naming the field (or a 415 for a body of another media type).
"""

from __future__ import annotations

import json
import time
import warnings

from aiohttp import web
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam
from google.protobuf import json_format
from google.rpc import code_pb2

from sdedit.v1 import sdedit_pb2 as pb
from service.errors import InvalidArgument
from service.transport.http.errors import parse_error_argument, transport_error

MULTIPART_PARTS = ("request", "image", "mask")


def quiet_multipart_warnings() -> None:
    """aiohttp warns about every malformed Content-Disposition a caller sends, once per distinct
    text: a caller could fill stderr and the warnings registry with text of its choosing.
    The door calls this when it starts."""
    warnings.filterwarnings("ignore", category=BadContentDispositionHeader)
    warnings.filterwarnings("ignore", category=BadContentDispositionParam)
DEEP = "is JSON nested too deeply to parse (an EditRequest needs a few levels)"


def parse_message(data: dict, message_type, root: str = ""):
    try:
        return json_format.ParseDict(data, message_type())
    except json_format.ParseError as exc:
        raise parse_error_argument(exc, root) from None
    except RecursionError:
        raise InvalidArgument(root or "body", DEEP) from None


def json_object(raw: bytes, where: str) -> dict:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(where, f"is not JSON: {exc}"[:200]) from None
    except RecursionError:  # [[[[... deeper than the interpreter's recursion limit
        raise InvalidArgument(where, DEEP) from None
    if not isinstance(data, dict):
        raise InvalidArgument(where, "must be a JSON object (an EditRequest)")
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # "\ud800": JSON may escape a lone surrogate, protobuf has no such string
        raise InvalidArgument(where, "holds a string that is not Unicode text (a lone surrogate escape)") from None
    return data


async def edit_request(request: web.Request) -> pb.EditRequest:
    """POST /v1/edits and /v1/jobs: a JSON EditRequest, or multipart/form-data."""
    if request.content_type == "multipart/form-data":
        return await multipart_edit_request(request)
    if request.content_type not in ("application/json", "application/octet-stream", "") and request.body_exists:
        raise transport_error(415, code_pb2.INVALID_ARGUMENT, "UNSUPPORTED_MEDIA_TYPE",
                              f"send application/json or multipart/form-data, not {request.content_type[:64]!r}",
                              field="Content-Type")
    return parse_message(json_object(await request.read(), "body"), pb.EditRequest)


async def multipart_edit_request(request: web.Request) -> pb.EditRequest:
    """Parts: `request` (the EditRequest as JSON, optional), `image` and `mask` (their bytes)."""
    try:
        form = await request.post()
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed multipart body
        raise InvalidArgument("body", f"is not a valid multipart/form-data body: {exc}"[:200]) from None
    unknown = [name for name in form if name not in MULTIPART_PARTS]
    if unknown:
        raise InvalidArgument(unknown[0][:64], "is not a part of an edit (parts: request, image, mask)")
    parts: dict[str, bytes] = {}
    for name in MULTIPART_PARTS:
        values = form.getall(name, [])
        if len(values) > 1:
            raise InvalidArgument(name, "is given more than once")
        if values:
            value = values[0]
            if isinstance(value, web.FileField):
                parts[name] = value.file.read()
            else:  # a field without a file name: text, or bytes with a content type of its own
                parts[name] = value.encode() if isinstance(value, str) else bytes(value)
    message = parse_message(json_object(parts.pop("request", b""), "request"), pb.EditRequest, "")
    for name, data in parts.items():
        if getattr(message, name):
            raise InvalidArgument(name, "is given both in the request part and as a part of its own")
        setattr(message, name, data)
    return message


def query(request: web.Request, extra: dict) -> dict:
    """The query's parameters (each at most once) over `extra` (the path's)."""
    data = dict(extra)
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise InvalidArgument(key[:64], "is given more than once")
        data[key] = values[0]
    return data


def watch_request(request: web.Request) -> pb.WatchJobRequest:
    """GET /v1/jobs/{id}/events: Last-Event-ID (what EventSource resends) wins over afterSequence."""
    data = query(request, {"id": request.match_info["id"]})
    last = request.headers.get("Last-Event-ID")
    if last is not None:
        if not last.strip().isdigit() or len(last.strip()) > 19:
            raise InvalidArgument("Last-Event-ID", f"must be an event id (a sequence number), got {last[:32]!r}")
        data["afterSequence"] = last.strip()
    return parse_message(data, pb.WatchJobRequest)


def deadline(request: web.Request) -> float | None:
    """The `Request-Timeout` header (seconds, like grpc-timeout) as a time.monotonic() deadline."""
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


def credentials(request: web.Request) -> tuple:
    """The `Authorization` header as the call pipeline reads gRPC metadata."""
    authorization = request.headers.get("Authorization")
    return (("authorization", authorization),) if authorization is not None else ()
