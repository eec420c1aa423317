"""Who may reach the HTTP door from a browser: the Origin and Host policy (docs/http.md).

- A state-changing request (any method but GET and HEAD) that carries an `Origin` other than
  the door's own (the scheme of the connection and the request's Host) is refused 403
  FOREIGN_ORIGIN, unless that origin is listed in --http-allowed-origins. A multipart form
  needs no CORS preflight, so without this any web page could make the service do work.
- Bound to loopback, a request whose Host is not a loopback name or address (localhost,
  127.0.0.0/8, [::1], any port) is refused 403 FOREIGN_HOST: a page that rebinds its own
  name to 127.0.0.1 (DNS rebinding) would otherwise read the answers. /healthz stays open.
- Every answer says `X-Content-Type-Options: nosniff`, and carries a Content-Security-Policy
  that lets the editor page load only its own files (its results are data: and blob: URLs)
  and never be framed.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web
from google.rpc import code_pb2
from yarl import URL

from service.tls import is_loopback
from service.transport.http.errors import HttpError, transport_error

SAFE_METHODS = frozenset({"GET", "HEAD"})
OPEN_PATHS = frozenset({"/healthz"})
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}


def normal_origin(origin: str) -> str | None:
    """scheme://host:port, lower case, with the scheme's default port made explicit (None: not an origin)."""
    try:
        url = URL(origin.strip())
        if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
            return None
        return f"{url.scheme}://{url.host.lower()}:{url.port}"
    except (ValueError, TypeError):
        return None


def parse_allowed(setting: str) -> frozenset[str]:
    """--http-allowed-origins (comma-separated origins), normalised; ValueError names a bad one."""
    allowed = set()
    for item in filter(None, (part.strip() for part in setting.split(","))):
        origin = normal_origin(item)
        if origin is None:
            raise ValueError(f"--http-allowed-origins: {item!r} is not an origin (scheme://host[:port])")
        allowed.add(origin)
    return frozenset(allowed)


def host_name(host: str) -> str:
    """The name or address of a Host header, without its port or brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_loopback_host(host: str) -> bool:
    name = host_name(host).rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class OriginPolicy:
    def __init__(self, bound_host: str, allowed_origins: str = ""):
        self.loopback = is_loopback(bound_host)
        self.allowed = parse_allowed(allowed_origins)

    def check(self, request: web.Request) -> HttpError | None:
        """The refusal of this request, or None: it may go on."""
        host = request.headers.get("Host")
        if self.loopback and host is not None and request.path not in OPEN_PATHS and not is_loopback_host(host):
            return transport_error(403, code_pb2.PERMISSION_DENIED, "FOREIGN_HOST",
                                   f"Host {host[:100]!r} is not a loopback name: this service listens on loopback only")
        origin = request.headers.get("Origin")
        if origin is None or request.method in SAFE_METHODS:
            return None
        seen = normal_origin(origin)
        own = normal_origin(f"{request.scheme}://{host}") if host else None
        if seen is not None and (seen == own or seen in self.allowed):
            return None
        return transport_error(403, code_pb2.PERMISSION_DENIED, "FOREIGN_ORIGIN",
                               f"Origin {origin[:100]!r} is not this service's own; list it in --http-allowed-origins "
                               "to let its pages call")


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers every answer carries (SSE streams and files included)."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
