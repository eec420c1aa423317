"""The one place that maps service errors to gRPC statuses.

    InvalidArgument   -> INVALID_ARGUMENT, with google.rpc.BadRequest naming the field
    NotFound          -> NOT_FOUND (a job unknown or expired)
    RequestIdConflict -> ALREADY_EXISTS (a request_id reused for a different request)
    Unauthenticated   -> UNAUTHENTICATED        PermissionDenied -> PERMISSION_DENIED
    ResourceExhausted -> RESOURCE_EXHAUSTED (QuotaExceeded: with google.rpc.RetryInfo)
    Unavailable / BackendError -> UNAVAILABLE
    DeadlineExceeded  -> DEADLINE_EXCEEDED      Cancelled -> CANCELLED
    EndedWithStatus   -> the status it carries (a failed or cancelled job's own)
    anything else     -> INTERNAL, logged once with the method name (details stay in the log)

Every status carries a google.rpc.ErrorInfo with a stable reason and domain "sdedit.v1". The
gRPC interceptor (interceptor.py) and the HTTP door (service/transport/http/) both answer
with these statuses.
"""

from __future__ import annotations

import logging

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
