"""Redis URLs: their accepted schemes, and their passwords masked for logs and errors."""

from __future__ import annotations

import urllib.parse

REDIS_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """redis://:secret@host/0 -> redis://:***@host/0, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def is_redis_url(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in REDIS_SCHEMES


def has_password(url: str) -> bool:
    return urllib.parse.urlsplit(url).password is not None
