"""The service's typed errors. One place (service/transport/grpc/status.py) maps them to gRPC codes."""

from __future__ import annotations

ECHO_LIMIT = 64  # characters of a caller's value quoted back in an error


def echo(value: object, limit: int = ECHO_LIMIT, quote: bool = True) -> str:
    """A caller-supplied value for an error message: repr'd (or not) and cut to `limit`
    characters, so a long value never overflows a client's metadata limit."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ServiceError(Exception):
    """Base of every error a caller may see, with a stable reason string."""

    reason = "INTERNAL"


class InvalidArgument(ServiceError):
    """A request field is wrong; `field` names it (proto field path)."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class RequestIdConflict(ServiceError):
    """A request_id already used by a different request (within the cache TTL).

    ALREADY_EXISTS rather than INVALID_ARGUMENT: the request is valid on its own; it clashes
    with the service's state, and the same request with a fresh request_id would succeed.
    """

    reason = "REQUEST_ID_REUSED"

    def __init__(self, message: str):
        super().__init__(f"request_id: {message}")
        self.field = "request_id"


class ResourceExhausted(ServiceError):
    """The admission queue is full; retry later."""

    reason = "QUEUE_FULL"


class Unavailable(ServiceError):
    """The service is draining, or the score backend is down or not ready."""

    reason = "UNAVAILABLE"


class BackendError(Unavailable):
    """The score backend failed; `kind` says how (for metrics and logs)."""

    reason = "BACKEND_UNAVAILABLE"

    def __init__(self, message: str, kind: str = "unavailable"):
        super().__init__(message)
        self.kind = kind


class ModelConfigError(Exception):
    """A model in the repository is malformed; raised at start-up so it fails fast."""


class NotFound(ServiceError):
    """No such job (unknown, another tenant's, or expired)."""

    reason = "NOT_FOUND"


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed; the loop stopped within one step."""

    reason = "DEADLINE_EXCEEDED"


class Cancelled(ServiceError):
    """The caller cancelled; the loop stopped within one step."""

    reason = "CANCELLED"


class Unauthenticated(ServiceError):
    """No token, or one no tenant holds. The message never repeats what the caller sent."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """A known tenant asked for something beyond its rights (a method, a model)."""

    reason = "PERMISSION_DENIED"


class QuotaExceeded(ResourceExhausted):
    """A tenant is over its quota; `retry_after` seconds is when a retry may pass
    (sent as google.rpc.RetryInfo)."""

    reason = "QUOTA_EXCEEDED"

    def __init__(self, message: str, retry_after: float, quota: str):
        super().__init__(message)
        self.retry_after = retry_after
        self.quota = quota  # "max_in_flight" or "work_per_minute"
