"""The shared cache: Redis through redis-py's asyncio client and a bounded connection pool.

The URL carries the address, database, password and TLS (rediss://, with ssl_* query
parameters such as ssl_ca_certs); the password may come separately instead (from a
Kubernetes Secret, where it need not be URL-escaped). Every command is bounded by `timeout` and never retried
here: a slow or absent Redis must cost an edit one short wait, and the fail-open layer
decides when to try again. redis-py's exceptions stop here, as CacheUnavailable.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from service.cache.store import CacheTimeout, CacheUnavailable
from service.config import redact_url

T = TypeVar("T")

# Deletes the lock only if it still holds our token: a leader whose lock expired must not
# delete the lock a new leader took since.
RELEASE_LOCK = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""

# Resets the lock's TTL only while it holds our token: a leader renews its own lock, never
# the lock a new leader took after ours expired.
EXTEND_LOCK = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("pexpire", KEYS[1], ARGV[2])
end
return 0
"""

# SET NX that also answers the value already there (SET NX GET needs Redis 7; this runs on 6).
ADD = """
local existing = redis.call("get", KEYS[1])
if existing then
    return existing
end
redis.call("set", KEYS[1], ARGV[1], "PX", ARGV[2])
return false
"""


class RedisStore:
    def __init__(self, url: str, timeout: float, max_connections: int, password: str = ""):
        self.url = redact_url(url)
        pool = aioredis.BlockingConnectionPool.from_url(
            url, password=password or None,  # settings refuse a password in both places
            max_connections=max_connections, timeout=timeout,  # waiting for a free connection
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._release = self._redis.register_script(RELEASE_LOCK)
        self._extend = self._redis.register_script(EXTEND_LOCK)
        self._add = self._redis.register_script(ADD)

    @property
    def client(self) -> aioredis.Redis:
        """The connection pool, shared with the tenants' quotas (service/tenancy/quotas.py)."""
        return self._redis

    async def _call(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except (RedisTimeout, TimeoutError) as exc:
            raise CacheTimeout(f"redis at {self.url}: {exc or 'timed out'}") from exc
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(f"redis at {self.url}: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        return await self._call(self._redis.get(key))

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        await self._call(self._redis.set(key, value, px=_millis(ttl_seconds)))
        return True

    async def add(self, key: str, value: bytes, ttl_seconds: float) -> tuple[bool, bytes | None]:
        existing = await self._call(self._add(keys=[key], args=[value, _millis(ttl_seconds)]))
        return existing is None, existing

    async def acquire_lock(self, key: str, token: str, ttl_seconds: float) -> bool:
        return bool(await self._call(self._redis.set(key, token, nx=True, px=_millis(ttl_seconds))))

    async def extend_lock(self, key: str, token: str, ttl_seconds: float) -> bool:
        return bool(await self._call(self._extend(keys=[key], args=[token, _millis(ttl_seconds)])))

    async def release_lock(self, key: str, token: str) -> bool:
        return bool(await self._call(self._release(keys=[key], args=[token])))

    async def exists(self, key: str) -> bool:
        return bool(await self._call(self._redis.exists(key)))

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))
