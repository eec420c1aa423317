"""The result cache: one interface (CacheStore), two backends (memory, redis), and the
logic over them (ResultCache: keys, single-flight, request_id records, fail-open)."""

from __future__ import annotations

from service.cache.keys import RequestKey, request_key
from service.cache.results import ResultCache
from service.cache.stats import CacheStats
from service.cache.store import CacheStore, CacheUnavailable
from service.config import Settings

__all__ = ["CacheStats", "CacheStore", "CacheUnavailable", "RequestKey", "ResultCache", "build_cache", "request_key"]


def build_cache(settings: Settings) -> ResultCache | None:
    """The cache the settings ask for; None for --cache none."""
    if settings.cache == "none":
        return None
    store: CacheStore
    if settings.cache == "redis":
        from service.cache.redis import RedisStore

        store = RedisStore(settings.redis_url, settings.redis_timeout_seconds, settings.redis_max_connections,
                           password=settings.redis_password)
    else:
        from service.cache.memory import MemoryStore

        store = MemoryStore(settings.cache_memory_bytes)
    return ResultCache(store, ttl_seconds=settings.cache_ttl_seconds, max_entry_bytes=settings.cache_max_entry_bytes,
                       # request_id records: anything the server can send (a larger response fails anyway)
                       max_request_bytes=settings.max_message_bytes,
                       key_prefix=settings.cache_key_prefix, lock_seconds=settings.cache_lock_seconds,
                       timeout=settings.redis_timeout_seconds, retry_seconds=settings.cache_retry_seconds)
