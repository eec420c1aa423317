"""The HTTP face of the one error model: a google.rpc.Status (from service/transport/grpc/status.py's
status_for, or carried by an aborted call) becomes an HTTP code and the AIP-193 JSON error

    {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "...", "details": [...]}}

Errors of the HTTP layer itself (an unknown route, a wrong method, a body over the limit, a
body that is not JSON) have the same shape, with an ErrorInfo of domain "sdedit.v1".
"""

from __future__ import annotations

import json
import math
import re

from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service.errors import InvalidArgument
from service.transport.grpc.status import ERROR_DOMAIN

# gRPC code -> HTTP code (google.rpc.Code's own table, with 499 for CANCELLED).
HTTP_CODES = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}


class HttpError(Exception):
    """An answer that is an error: its HTTP code, its google.rpc.Status and extra headers."""

    def __init__(self, http_code: int, status: status_pb2.Status, headers: dict[str, str] | None = None):
        super().__init__(status.message)
        self.http_code = http_code
        self.status = status
        self.headers = headers or {}


def http_code(status: status_pb2.Status) -> int:
    return HTTP_CODES.get(status.code, 500)


def error_body(status: status_pb2.Status, code: int | None = None) -> dict:
    """The JSON error of a status (AIP-193): its HTTP code, code name, message, details."""
    body = {"code": http_code(status) if code is None else code,
            "status": code_pb2.Code.Name(status.code) if status.code in code_pb2.Code.values() else "UNKNOWN",
            "message": status.message}
    details = json_format.MessageToDict(status).get("details")
    if details:
        body["details"] = details
    return {"error": body}


def retry_after(status: status_pb2.Status) -> str | None:
    """Retry-After (whole seconds) for RESOURCE_EXHAUSTED: from its RetryInfo, else 1."""
    if status.code != code_pb2.RESOURCE_EXHAUSTED:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return str(max(1, math.ceil(info.retry_delay.ToMilliseconds() / 1000)))
    return "1"


def http_error(status: status_pb2.Status) -> HttpError:
    """Its HTTP error; 401 says how to authenticate (RFC 6750), 429 and 503 when to retry."""
    after = retry_after(status)
    headers = {"Retry-After": after} if after else {}
    if status.code == code_pb2.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="sdedit"'
    return HttpError(http_code(status), status, headers)


def transport_error(http: int, grpc_code: int, reason: str, message: str, field: str = "") -> HttpError:
    """An error of the HTTP layer (no gRPC method behind it) in the same shape."""
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    details.append(info)
    if field:
        bad = any_pb2.Any()
        bad.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]))
        details.append(bad)
    return HttpError(http, status_pb2.Status(code=grpc_code, message=f"{field}: {message}" if field else message,
                                             details=details))


def json_dumps(body: object) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


# --- json_format's parse errors -> the field they are about ---------------------------------

_NESTED = re.compile(r"^Failed to parse (\w+) field: ")
_UNKNOWN = re.compile(r'has no field named "([^"]+)"')
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _snake(name: str) -> str:
    return _CAMEL.sub(lambda m: "_" + m.group(1).lower(), name)


def parse_error_argument(exc: Exception, root: str = "") -> InvalidArgument:
    """A json_format.ParseError as INVALID_ARGUMENT naming the field (proto names, dotted):
    'Failed to parse job field: ... has no field named "x"' -> field job.x."""
    text = str(exc)
    path = []
    while (m := _NESTED.match(text)) is not None:
        path.append(_snake(m.group(1)))
        text = text[m.end():]
    unknown = _UNKNOWN.search(text)
    if unknown is not None:
        path.append(unknown.group(1))
        problem = "is not a field of this message"
    else:
        problem = text.split(" at ")[0].rstrip(".") or "cannot be parsed"
    field = ".".join(p for p in ([root] if root else []) + path) or root or "body"
    return InvalidArgument(field, problem[:200])
