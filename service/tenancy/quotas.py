"""Per-tenant quotas, shared by every replica through Redis (in memory without it).

Two limits per tenant (service/tenancy/tenants.py): `max_in_flight`, edits admitted at once, and
`work_per_minute`, network calls x images (a 16-sample request of 20 steps costs 320, 16
times a single one), a token bucket that refills `work_per_minute` per minute up to that
much. Both are checked and taken in one atomic step: a Lua script on Redis (the result
cache's server), or a lock-free dict in this process. Over either: QuotaExceeded
(RESOURCE_EXHAUSTED with google.rpc.RetryInfo: when the bucket will hold the work, or 1 s
for in-flight edits). A request costing more than the whole per-minute quota can never pass:
PERMISSION_DENIED.

In Redis an edit in flight is a member of the tenant's sorted set, scored by its lease's end
(`quota_lease_seconds`): a replica that dies mid-edit frees its share when the lease ends. A
holder that runs longer (a job) renews its lease every third of that (`Lease.renew`).
When Redis fails, `quota_fail_open` decides: admit (default) or UNAVAILABLE; either way the
decision is counted (sdedit_quota_store_errors_total{decision}).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from service.errors import PermissionDenied, QuotaExceeded, Unavailable
from service.tenancy.tenants import Tenant

log = logging.getLogger(__name__)
IN_FLIGHT_RETRY_SECONDS = 1.0  # an edit ends when it ends; one second is a fair guess
WINDOW_MS = 60_000

ACQUIRE = """
-- KEYS[1]: the tenant's in-flight set, KEYS[2]: its work bucket
-- ARGV: lease id, max_in_flight, lease ms, work, work_per_minute
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_in_flight, lease_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local work, rate = tonumber(ARGV[4]), tonumber(ARGV[5])
if max_in_flight > 0 then
  redis.call("zremrangebyscore", KEYS[1], "-inf", now)
  if redis.call("zcard", KEYS[1]) >= max_in_flight then
    return {0, "max_in_flight", 0}
  end
end
if rate > 0 and work > 0 then
  local bucket = redis.call("hmget", KEYS[2], "tokens", "ts")
  local tokens = tonumber(bucket[1]) or rate
  local ts = tonumber(bucket[2]) or now
  tokens = math.min(rate, tokens + math.max(0, now - ts) * rate / 60000)
  if tokens < work then
    return {0, "work_per_minute", math.ceil((work - tokens) * 60000 / rate)}
  end
  redis.call("hset", KEYS[2], "tokens", tostring(tokens - work), "ts", tostring(now))
  redis.call("pexpire", KEYS[2], 60000 * 2)
end
if max_in_flight > 0 then
  redis.call("zadd", KEYS[1], now + lease_ms, ARGV[1])
  redis.call("pexpire", KEYS[1], lease_ms + 1000)
end
return {1, "", 0}
"""

RENEW = """
-- KEYS[1]: the tenant's in-flight set; ARGV: lease id, lease ms. 0 when the lease had lapsed
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call("zscore", KEYS[1], ARGV[1]) then return 0 end
redis.call("zadd", KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call("pexpire", KEYS[1], tonumber(ARGV[2]) + 1000)
return 1
"""


class Lease:
    """One admitted edit's hold on its tenant's in-flight quota; released once, renewed by a
    holder that may outlive `quota_lease_seconds` (a job's run)."""

    def __init__(self, release: Callable[[], None] | None = None,
                 renew: Callable[[], Awaitable[None]] | None = None):
        self._release = release
        self._renew = renew

    async def renew(self) -> None:
        """Extends the hold by another `quota_lease_seconds` (nothing once released)."""
        if self._release is not None and self._renew is not None:
            await self._renew()

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclass
class _Bucket:
    tokens: float
    ts: float


@dataclass
class MemoryQuotaStore:
    """The same limits in this process (no Redis): not shared between replicas."""

    in_flight: dict[str, dict[str, float]] = field(default_factory=dict)
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    async def acquire(self, tenant: Tenant, lease_id: str, work: int, lease_seconds: float) -> tuple[bool, str, float]:
        now = time.monotonic()
        held = self.in_flight.setdefault(tenant.name, {})
        for key in [k for k, end in held.items() if end <= now]:
            del held[key]
        if tenant.max_in_flight and len(held) >= tenant.max_in_flight:
            return False, "max_in_flight", 0.0
        if tenant.work_per_minute and work:
            rate = tenant.work_per_minute
            bucket = self.buckets.setdefault(tenant.name, _Bucket(rate, now))
            tokens = min(rate, bucket.tokens + (now - bucket.ts) * rate / 60)
            if tokens < work:
                return False, "work_per_minute", (work - tokens) * 60 / rate
            bucket.tokens, bucket.ts = tokens - work, now
        if tenant.max_in_flight:
            held[lease_id] = now + lease_seconds
        return True, "", 0.0

    async def release(self, tenant: Tenant, lease_id: str) -> None:
        self.in_flight.get(tenant.name, {}).pop(lease_id, None)

    async def renew(self, tenant: Tenant, lease_id: str, lease_seconds: float) -> None:
        held = self.in_flight.get(tenant.name, {})
        if lease_id in held:
            held[lease_id] = time.monotonic() + lease_seconds


class RedisQuotaStore:
    """The limits in Redis, one atomic script per admission: shared by every replica."""

    def __init__(self, redis, key_prefix: str):
        self._redis = redis
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)
        self._base = f"{key_prefix}:quota"

    def _keys(self, tenant: Tenant) -> list[str]:
        # one hash tag per tenant: both keys on one Redis Cluster slot
        return [f"{self._base}:{{{tenant.name}}}:in_flight", f"{self._base}:{{{tenant.name}}}:work"]

    async def acquire(self, tenant: Tenant, lease_id: str, work: int, lease_seconds: float) -> tuple[bool, str, float]:
        ok, quota, retry_ms = await self._acquire(keys=self._keys(tenant), args=[
            lease_id, tenant.max_in_flight, max(1, round(lease_seconds * 1000)), work, tenant.work_per_minute])
        return bool(ok), quota.decode() if isinstance(quota, bytes) else str(quota), int(retry_ms) / 1000

    async def release(self, tenant: Tenant, lease_id: str) -> None:
        await self._redis.zrem(self._keys(tenant)[0], lease_id)

    async def renew(self, tenant: Tenant, lease_id: str, lease_seconds: float) -> None:
        await self._renew(keys=self._keys(tenant)[:1], args=[lease_id, max(1, round(lease_seconds * 1000))])


class QuotaObserver:
    def quota_store_error(self, decision: str) -> None: ...


class Quotas:
    def __init__(self, store, *, fail_open: bool = True, lease_seconds: float = 900.0, timeout: float = 0.5,
                 observer: QuotaObserver | None = None):
        self.store = store
        self.fail_open = fail_open
        self.lease_seconds = lease_seconds
        self.timeout = timeout
        self.observer = observer
        self._releasing: set[asyncio.Task] = set()

    async def acquire(self, tenant: Tenant, work: int) -> Lease:
        if tenant.work_per_minute and work > tenant.work_per_minute:
            raise PermissionDenied(f"this request is {work} network calls x images, more than tenant {tenant.name!r}'s "
                                   f"whole quota of {tenant.work_per_minute} per minute")
        lease_id = secrets.token_hex(12)
        try:
            ok, quota, retry = await asyncio.wait_for(self.store.acquire(tenant, lease_id, work, self.lease_seconds),
                                                      self.timeout)
        except Exception as exc:  # Redis down or slow: the setting decides
            decision = "allowed" if self.fail_open else "refused"
            if self.observer is not None:
                self.observer.quota_store_error(decision)
            log.warning("quota store failed (%s: %s); %s", type(exc).__name__, exc,
                        "admitting (quota_fail_open)" if self.fail_open else "refusing")
            if self.fail_open:
                return Lease()
            raise Unavailable("the quota store is unavailable; retry later") from exc
        if not ok:
            if quota == "max_in_flight":
                raise QuotaExceeded(f"tenant {tenant.name!r} has {tenant.max_in_flight} edits in flight, its "
                                    "max_in_flight; retry when one ends", IN_FLIGHT_RETRY_SECONDS, quota)
            raise QuotaExceeded(f"tenant {tenant.name!r} is over its work quota of {tenant.work_per_minute} network "
                                f"calls x images per minute; this request needs {work}; retry in {retry:.1f} s",
                                max(retry, 0.001), quota)
        if not tenant.max_in_flight:
            return Lease()
        return Lease(lambda: self._release(tenant, lease_id), lambda: self._renew(tenant, lease_id))

    async def _renew(self, tenant: Tenant, lease_id: str) -> None:
        try:
            await asyncio.wait_for(self.store.renew(tenant, lease_id, self.lease_seconds), self.timeout)
        except Exception as exc:  # noqa: BLE001 - the next renewal tries again; the lease is long
            log.warning("quota lease not renewed (%s)", exc)

    def _release(self, tenant: Tenant, lease_id: str) -> None:
        async def release() -> None:
            try:
                await asyncio.wait_for(self.store.release(tenant, lease_id), self.timeout)
            except Exception as exc:  # noqa: BLE001 - the lease ends by itself (quota_lease_seconds)
                log.warning("quota lease not released (%s); it expires by itself", exc)

        task = asyncio.get_running_loop().create_task(release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
