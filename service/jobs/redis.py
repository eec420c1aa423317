"""Jobs on Redis: records in hashes, a work queue on Redis Streams, one consumer group.

Keys, all under the job prefix (never the cache's: a cache Redis may evict, a job store must
not; point --job-redis-url at a noeviction instance or database to keep them apart):

    <p>:job:<id>           hash: the record               TTL: job_ttl_seconds
    <p>:job:<id>:request   the encoded request            dropped when the job ends
    <p>:job:<id>:result    the encoded result             TTL, from the end
    <p>:job:<id>:events    stream of events, id <sequence>-1, capped at job_max_events
    <p>:owner:<owner>      sorted set of the owner's job ids by creation time; each submit
                           drops its oldest entries whose records have expired
    <p>:queue:<lane>       stream of {id: <job id>}, lanes high, normal, low; group "workers"

A replica takes an entry with XREADGROUP (it is then pending, owned by that replica's
consumer) and renews its lease while the job runs (XCLAIM to itself, resetting the idle
time, only while it still owns the entry). A replica that dies stops renewing: once the entry
has been idle for the lease, any replica takes it over with XAUTOCLAIM and runs the job
again. An ended job's entry is acknowledged and deleted (XACK, XDEL), so the queue streams
hold only jobs not yet ended and need no TTL. The scripts below keep each transition atomic;
terminal states are never overwritten.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Awaitable
from dataclasses import asdict
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.config import redact_url
from service.jobs.records import LANES, JobEvent, JobRecord, lane_of
from service.jobs.store import Claim, JobStoreUnavailable
from service.sde import Progress

T = TypeVar("T")
GROUP = "workers"
MIN_COMMAND_SECONDS = 5.0  # jobs do not fail open: a slow answer is better than a lost write

# A new job: its record, its request, its place in the owner's index and in the queue, in one
# step. The index is trimmed here too: of its oldest TRIM_PER_SUBMIT entries, those whose record
# has expired are dropped (records expire about in creation order, so the oldest are the ones to
# check), so an owner's index holds about its live jobs, not every job it ever submitted.
# ARGV: ttl ms, request, id, created, how many to check, the record key prefix, then the fields.
SUBMIT = """
redis.call('hset', KEYS[1], unpack(ARGV, 7))
redis.call('pexpire', KEYS[1], ARGV[1])
redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[1])
local gone = {}
for _, id in ipairs(redis.call('zrange', KEYS[3], 0, tonumber(ARGV[5]) - 1)) do
  if redis.call('exists', ARGV[6] .. id) == 0 then gone[#gone + 1] = id end
end
if #gone > 0 then redis.call('zrem', KEYS[3], unpack(gone)) end
redis.call('zadd', KEYS[3], ARGV[4], ARGV[3])
redis.call('pexpire', KEYS[3], ARGV[1])
redis.call('xadd', KEYS[4], '*', 'id', ARGV[3])
return #gone
"""
TRIM_PER_SUBMIT = 64

START = """
local state = redis.call('hget', KEYS[1], 'state')
if not state or state == 'succeeded' or state == 'failed' or state == 'cancelled' then return -1 end
local attempts = redis.call('hincrby', KEYS[1], 'attempts', 1)
redis.call('hset', KEYS[1], 'state', 'running', 'started', ARGV[1], 'progress', '')
redis.call('pexpire', KEYS[1], ARGV[2])
redis.call('pexpire', KEYS[2], ARGV[2])
return attempts
"""

EVENT = """
if redis.call('hget', KEYS[1], 'state') ~= 'running' then return 0 end
local seq = redis.call('hincrby', KEYS[1], 'sequence', 1)
redis.call('xadd', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'p', ARGV[1])
redis.call('hset', KEYS[1], 'progress', ARGV[2])
redis.call('pexpire', KEYS[2], ARGV[4])
return seq
"""

REQUEUE = """
if redis.call('hget', KEYS[1], 'state') == 'running' then redis.call('hset', KEYS[1], 'state', 'queued') end
return 0
"""

FINISH = """
local ended = 0
local state = redis.call('hget', KEYS[1], 'state')
if state and state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
  local seq = redis.call('hincrby', KEYS[1], 'sequence', 1)
  redis.call('xadd', KEYS[2], seq .. '-1', 'end', ARGV[1])
  redis.call('hset', KEYS[1], 'state', ARGV[1], 'ended', ARGV[2], 'expires', ARGV[3], 'error', ARGV[5])
  if ARGV[6] == '1' then redis.call('set', KEYS[3], ARGV[7], 'PX', ARGV[4]) end
  redis.call('pexpire', KEYS[1], ARGV[4])
  redis.call('pexpire', KEYS[2], ARGV[4])
  redis.call('del', KEYS[4])
  ended = 1
end
if ARGV[8] ~= '' then
  redis.call('xack', KEYS[5], ARGV[9], ARGV[8])
  redis.call('xdel', KEYS[5], ARGV[8])
end
return ended
"""

RENEW = """
local pending = redis.call('xpending', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('xclaim', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""


# Consumers of replicas that are gone: every replica start adds one (hostname-pid-random) to the
# group, and Redis keeps it until deleted. One with no pending entry and idle longer than ARGV[2]
# ms is dropped; one with entries is left alone (deleting it would drop them: XAUTOCLAIM hands
# them to a live replica first, and a later sweep removes it). In one script, so a consumer
# cannot take an entry between the check and the delete.
FORGET_CONSUMERS = """
local dropped = 0
for _, info in ipairs(redis.call('xinfo', 'consumers', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['pending'] == 0 and fields['idle'] > tonumber(ARGV[2]) and fields['name'] ~= ARGV[3] then
    redis.call('xgroup', 'delconsumer', KEYS[1], ARGV[1], fields['name'])
    dropped = dropped + 1
  end
end
return dropped
"""
CONSUMER_SWEEP_SECONDS = 60.0  # how often a replica looks for dead consumers


WEBHOOK = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], 'webhook_state', ARGV[1], 'webhook_attempts', ARGV[2], 'webhook_http_status', ARGV[3],
           'webhook_error', ARGV[4])
return 1
"""


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisJobStore:
    kind = "redis"

    def __init__(self, url: str, timeout: float, max_connections: int, password: str = "", prefix: str = "sdedit-jobs",
                 max_events: int = 256, ttl_seconds: float = 86400.0):
        self.url = redact_url(url)
        self.prefix, self.max_events, self.ttl_seconds = prefix, max_events, ttl_seconds
        timeout = max(timeout, MIN_COMMAND_SECONDS)
        pool = aioredis.BlockingConnectionPool.from_url(
            url, password=password or None, max_connections=max_connections, timeout=timeout,
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        self._redis = aioredis.Redis(connection_pool=pool)
        self._submit = self._redis.register_script(SUBMIT)
        self._start = self._redis.register_script(START)
        self._event = self._redis.register_script(EVENT)
        self._requeue = self._redis.register_script(REQUEUE)
        self._finish = self._redis.register_script(FINISH)
        self._renew = self._redis.register_script(RENEW)
        self._webhook = self._redis.register_script(WEBHOOK)
        self._forget_consumers = self._redis.register_script(FORGET_CONSUMERS)
        self._last_sweep = 0.0

    # keys
    def _job(self, job_id: str, part: str = "") -> str:
        return f"{self.prefix}:job:{job_id}" + (f":{part}" if part else "")

    def _queue(self, lane: str) -> str:
        return f"{self.prefix}:queue:{lane}"

    def _owner(self, owner: str) -> str:
        return f"{self.prefix}:owner:{urllib.parse.quote(owner, safe='')}"

    async def _call(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise JobStoreUnavailable(f"job store: redis at {self.url}: {exc or type(exc).__name__}") from exc

    async def open(self) -> None:
        for lane in LANES:
            try:
                await self._call(self._redis.xgroup_create(self._queue(lane), GROUP, id="0", mkstream=True))
            except JobStoreUnavailable as exc:
                if "BUSYGROUP" not in str(exc):  # the group exists: another replica made it
                    raise

    async def submit(self, record: JobRecord, request: bytes, ttl_seconds: float) -> None:
        fields = [part for pair in record.to_fields().items() for part in pair]
        keys = [self._job(record.id), self._job(record.id, "request"), self._owner(record.owner),
                self._queue(lane_of(record.priority))]
        args = [_millis(ttl_seconds), request, record.id, repr(record.created), TRIM_PER_SUBMIT, self._job(""), *fields]
        await self._call(self._submit(keys=keys, args=args))

    async def get(self, job_id: str, with_result: bool = False) -> JobRecord | None:
        raw = await self._call(self._redis.hgetall(self._job(job_id)))
        if not raw:
            return None
        record = JobRecord.from_fields(raw)
        if with_result:
            record.result = await self._call(self._redis.get(self._job(job_id, "result")))
        return record

    async def request(self, job_id: str) -> bytes | None:
        return await self._call(self._redis.get(self._job(job_id, "request")))

    async def claim(self, consumer: str, lease_seconds: float) -> Claim | None:
        try:
            return await self._claim(consumer, lease_seconds)
        except JobStoreUnavailable as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.open()  # Redis lost the group (restarted without persistence): make it again
            return await self._claim(consumer, lease_seconds)

    async def forget_dead_consumers(self, consumer: str, idle_seconds: float) -> int:
        """Deletes the group's consumers with no pending entry, idle longer than idle_seconds
        (replicas that stopped or died), except `consumer`; returns how many."""
        dropped = 0
        for lane in LANES:
            dropped += int(await self._call(self._forget_consumers(keys=[self._queue(lane)],
                                                                   args=[GROUP, _millis(idle_seconds), consumer])))
        return dropped

    async def _claim(self, consumer: str, lease_seconds: float) -> Claim | None:
        now = asyncio.get_running_loop().time()
        if now - self._last_sweep >= CONSUMER_SWEEP_SECONDS:
            self._last_sweep = now
            # a live replica polls every lane every job_poll_seconds: ten leases of silence is death
            await self.forget_dead_consumers(consumer, max(10 * lease_seconds, 60.0))
        for lane in LANES:
            answer = await self._call(self._redis.xautoclaim(self._queue(lane), GROUP, consumer, _millis(lease_seconds),
                                                             start_id="0-0", count=1))
            for entry, fields in answer[1]:
                if fields:
                    return Claim(fields[b"id"].decode(), entry.decode(), lane, reclaimed=True)
        for lane in LANES:
            answer = await self._call(self._redis.xreadgroup(GROUP, consumer, {self._queue(lane): ">"}, count=1))
            for _, entries in answer or []:
                for entry, fields in entries:
                    return Claim(fields[b"id"].decode(), entry.decode(), lane)
        return None

    async def renew(self, claim: Claim, consumer: str) -> bool:
        return bool(await self._call(self._renew(keys=[self._queue(claim.lane)], args=[GROUP, claim.entry, consumer])))

    async def start(self, job_id: str, now: float, ttl_seconds: float) -> JobRecord | None:
        attempts = await self._call(self._start(keys=[self._job(job_id), self._job(job_id, "request")],
                                                args=[repr(now), _millis(ttl_seconds)]))
        return None if attempts < 0 else await self.get(job_id)

    async def requeue(self, job_id: str) -> None:
        await self._call(self._requeue(keys=[self._job(job_id)]))

    async def event(self, job_id: str, payload: bytes, progress: Progress) -> int:
        return await self._call(self._event(keys=[self._job(job_id), self._job(job_id, "events")],
                                            args=[payload, json.dumps(asdict(progress)), self.max_events,
                                                  _millis(self.ttl_seconds)]))

    async def finish(self, job_id: str, state: str, now: float, ttl_seconds: float, result: bytes | None,
                     error: bytes, claim: Claim | None) -> bool:
        queue = self._queue(claim.lane if claim else LANES[1])
        keys = [self._job(job_id), self._job(job_id, "events"), self._job(job_id, "result"), self._job(job_id, "request"), queue]
        args = [state, repr(now), repr(now + ttl_seconds), _millis(ttl_seconds), error, "1" if result is not None else "0",
                result or b"", claim.entry if claim else "", GROUP]
        return bool(await self._call(self._finish(keys=keys, args=args)))

    async def defer(self, claim: Claim) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(self._queue(claim.lane), {"id": claim.job_id})
        pipe.xack(self._queue(claim.lane), GROUP, claim.entry)
        pipe.xdel(self._queue(claim.lane), claim.entry)
        await self._call(pipe.execute())

    async def ack(self, claim: Claim) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(self._queue(claim.lane), GROUP, claim.entry)
        pipe.xdel(self._queue(claim.lane), claim.entry)
        await self._call(pipe.execute())

    async def webhook(self, job_id: str, state: str, attempts: int, http_status: int, error: str) -> None:
        await self._call(self._webhook(keys=[self._job(job_id)], args=[state, attempts, http_status, error]))

    async def events(self, job_id: str, after: int, wait_seconds: float) -> list[JobEvent]:
        found = await self._read(job_id, after)
        if not found:
            await asyncio.sleep(wait_seconds)
            found = await self._read(job_id, after)
        return found

    async def _read(self, job_id: str, after: int) -> list[JobEvent]:
        entries = await self._call(self._redis.xrange(self._job(job_id, "events"), min=f"{after + 1}-0"))
        return [JobEvent(int(entry.split(b"-")[0]), fields.get(b"p", b""), b"end" in fields) for entry, fields in entries]

    async def list(self, owner: str, offset: int, limit: int) -> tuple[list[JobRecord], int | None]:
        key = self._owner(owner)
        ids = await self._call(self._redis.zrevrange(key, offset, offset + limit))  # one more: is there a next page?
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids[:limit]:
            pipe.hgetall(self._job(job_id.decode()))
        records, gone = [], []
        for job_id, raw in zip(ids, await self._call(pipe.execute())):
            if raw:
                records.append(JobRecord.from_fields(raw))
            else:
                gone.append(job_id)
        if gone:  # expired records: forget them in the index too
            await self._call(self._redis.zrem(key, *gone))
        return records, offset + limit if len(ids) > limit else None

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)
