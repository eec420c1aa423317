"""The one interface of a cache backend: bytes in, bytes out, a TTL on every key, locks.

Backends raise CacheUnavailable (and only that) when they cannot answer; the fail-open
layer (service/cache/failopen.py) turns it into "not cached" so edits go on.
"""

from __future__ import annotations

from typing import Protocol


class CacheUnavailable(Exception):
    """The backend could not be reached or answered with an error."""


class CacheTimeout(CacheUnavailable):
    """The backend did not answer in time (a slow failure: worth not repeating soon)."""


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        """Stores with a TTL; False when the backend declined (too large for it)."""

    async def add(self, key: str, value: bytes, ttl_seconds: float) -> tuple[bool, bytes | None]:
        """Stores only if `key` holds nothing (SET NX, atomically): (stored, the value already
        there, if any). Never overwrites; stored is False when one was there or the backend
        declined (too large for it)."""

    async def acquire_lock(self, key: str, token: str, ttl_seconds: float) -> bool:
        """Set-if-absent with a TTL: True when this caller now holds the lock."""

    async def extend_lock(self, key: str, token: str, ttl_seconds: float) -> bool:
        """Resets the lock's TTL only if `token` still holds it; False when it is lost."""

    async def release_lock(self, key: str, token: str) -> bool:
        """Deletes the lock only if `token` still holds it (compare-and-delete)."""

    async def exists(self, key: str) -> bool: ...

    async def ping(self) -> None:
        """Raises CacheUnavailable when the backend is down."""

    async def close(self) -> None: ...
