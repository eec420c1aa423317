"""The embedded cache: an LRU bounded in bytes, in this process only.

Size is counted as the bytes of each key (UTF-8) plus its value; the sum never exceeds
`max_bytes`. An entry larger than the bound is not stored and evicts nothing. Expired
entries are dropped when read or when eviction reaches them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryStore:
    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.size = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (value, expires_at)
        self._locks: dict[str, tuple[str, float]] = {}  # key -> (token, expires_at)

    @staticmethod
    def cost(key: str, value: bytes) -> int:
        return len(key.encode()) + len(value)

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.size -= self.cost(key, value)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        if key in self._entries:
            self._drop(key)  # replaced, or (if the new value is too large) no longer current
        cost = self.cost(key, value)
        if cost > self.max_bytes:
            return False
        while self.size + cost > self.max_bytes:
            self._drop(next(iter(self._entries)))  # least recently used first
        self._entries[key] = (value, self._clock() + ttl_seconds)
        self.size += cost
        return True

    async def add(self, key: str, value: bytes, ttl_seconds: float) -> tuple[bool, bytes | None]:
        existing = await self.get(key)
        if existing is not None:
            return False, existing
        return await self.set(key, value, ttl_seconds), None

    async def acquire_lock(self, key: str, token: str, ttl_seconds: float) -> bool:
        now = self._clock()
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return False
        self._locks[key] = (token, now + ttl_seconds)
        return True

    async def extend_lock(self, key: str, token: str, ttl_seconds: float) -> bool:
        now = self._clock()
        held = self._locks.get(key)
        if held is None or held[0] != token or held[1] <= now:
            return False
        self._locks[key] = (token, now + ttl_seconds)
        return True

    async def release_lock(self, key: str, token: str) -> bool:
        held = self._locks.get(key)
        if held is None or held[0] != token:
            return False
        del self._locks[key]
        return True

    async def exists(self, key: str) -> bool:
        held = self._locks.get(key)
        return (held is not None and held[1] > self._clock()) or await self.get(key) is not None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self._locks.clear()
        self.size = 0
