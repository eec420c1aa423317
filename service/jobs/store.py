"""Where jobs live: one interface (JobStore), two backends.

MemoryJobStore: this process only (the embedded default, without Redis); lost on exit.
RedisJobStore (service/jobs/redis.py): shared by every replica, survives their restarts.

A claim is a queue entry a replica has taken: with Redis, an entry pending in the consumer
group, its lease renewed while the job runs; a replica that dies leaves it pending and
another one reclaims it once the lease has lapsed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, replace
from typing import Protocol

from service.jobs.records import LANES, QUEUED, RUNNING, TERMINAL, JobEvent, JobRecord, lane_of
from service.sde import Progress


class JobStoreUnavailable(Exception):
    """The store could not be reached (Redis down): jobs cannot be submitted or read."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    entry: str = ""  # the queue entry (Redis stream id)
    lane: str = LANES[1]
    reclaimed: bool = False  # taken over from a replica whose lease lapsed


class JobStore(Protocol):
    kind: str  # "memory" or "redis", as ListModels reports it

    async def open(self) -> None: ...

    async def submit(self, record: JobRecord, request: bytes, ttl_seconds: float) -> None: ...

    async def get(self, job_id: str, with_result: bool = False) -> JobRecord | None: ...

    async def request(self, job_id: str) -> bytes | None: ...

    async def claim(self, consumer: str, lease_seconds: float) -> Claim | None:
        """A lapsed lease first (highest lane first), then the next new entry; None when idle."""

    async def renew(self, claim: Claim, consumer: str) -> bool:
        """Extends the lease; False when another consumer holds the entry now."""

    async def start(self, job_id: str, now: float, ttl_seconds: float) -> JobRecord | None:
        """queued -> running, attempts + 1; None when the job is gone or has ended."""

    async def requeue(self, job_id: str) -> None:
        """running -> queued: its run stopped without an ending (the replica is stopping)."""

    async def defer(self, claim: Claim) -> None:
        """A claimed job that did not start (its tenant is at max_in_flight) goes back, still
        queued, to the end of its lane: the jobs behind it are claimed first."""

    async def event(self, job_id: str, payload: bytes, progress: Progress) -> int:
        """Appends a progress event of a running job; its sequence, or 0 when not running."""

    async def finish(self, job_id: str, state: str, now: float, ttl_seconds: float, result: bytes | None,
                     error: bytes, claim: Claim | None) -> bool:
        """Ends the job (unless it has ended already: False) and acknowledges the claim."""

    async def ack(self, claim: Claim) -> None: ...

    async def webhook(self, job_id: str, state: str, attempts: int, http_status: int, error: str) -> None:
        """Records the state of the job's webhook delivery (nothing when the record is gone)."""

    async def events(self, job_id: str, after: int, wait_seconds: float) -> list[JobEvent]:
        """Events after `after`, waiting up to wait_seconds for one when there are none."""

    async def list(self, owner: str, offset: int, limit: int) -> tuple[list[JobRecord], int | None]:
        """The owner's jobs, newest first; the next page's offset, or None at the end."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class MemoryJobStore:
    """Jobs in this process. A job's request goes when it ends; its record, result and events
    TTL seconds after that, purged by a task every purge_seconds (from open to close) and on
    each submit."""

    kind = "memory"

    def __init__(self, max_events: int, purge_seconds: float = 60.0):
        self.max_events, self.purge_seconds = max_events, purge_seconds
        self._purger: asyncio.Task | None = None
        self._records: dict[str, JobRecord] = {}
        self._requests: dict[str, bytes] = {}
        self._results: dict[str, bytes] = {}
        self._events: dict[str, list[JobEvent]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._queue: list[tuple[int, int, str]] = []
        self._order = itertools.count()

    async def open(self) -> None:
        if self._purger is None:
            self._purger = asyncio.get_running_loop().create_task(self._purge_every(), name="memory job store purge")

    async def _purge_every(self) -> None:
        while True:
            await asyncio.sleep(self.purge_seconds)
            self._purge(time.time())

    def _purge(self, now: float) -> None:
        for job_id in [i for i, r in self._records.items() if r.done and r.expires <= now]:
            for table in (self._records, self._requests, self._results, self._events, self._changed):
                table.pop(job_id, None)

    async def submit(self, record: JobRecord, request: bytes, ttl_seconds: float) -> None:
        self._purge(time.time())
        self._records[record.id] = replace(record)
        self._requests[record.id] = request
        self._events[record.id] = []
        self._changed[record.id] = asyncio.Event()
        heapq.heappush(self._queue, (LANES.index(lane_of(record.priority)), next(self._order), record.id))

    def _live(self, job_id: str) -> JobRecord | None:
        record = self._records.get(job_id)
        if record is not None and record.done and record.expires <= time.time():
            return None
        return record

    async def get(self, job_id: str, with_result: bool = False) -> JobRecord | None:
        record = self._live(job_id)
        if record is None:
            return None
        return replace(record, result=self._results.get(job_id) if with_result else None)

    async def request(self, job_id: str) -> bytes | None:
        return self._requests.get(job_id)

    async def claim(self, consumer: str, lease_seconds: float) -> Claim | None:
        while self._queue:
            lane, _, job_id = heapq.heappop(self._queue)
            if job_id in self._records:
                return Claim(job_id, lane=LANES[lane])
        return None

    async def renew(self, claim: Claim, consumer: str) -> bool:
        return True

    async def start(self, job_id: str, now: float, ttl_seconds: float) -> JobRecord | None:
        record = self._live(job_id)
        if record is None or record.done:
            return None
        record.state, record.attempts, record.started, record.progress = RUNNING, record.attempts + 1, now, None
        return replace(record)

    async def defer(self, claim: Claim) -> None:
        if claim.job_id in self._records:
            heapq.heappush(self._queue, (LANES.index(claim.lane), next(self._order), claim.job_id))

    async def requeue(self, job_id: str) -> None:
        record = self._records.get(job_id)
        if record is not None and record.state == RUNNING:
            record.state = QUEUED

    def _append(self, record: JobRecord, event: JobEvent) -> None:
        events = self._events[record.id]
        events.append(event)
        del events[:-self.max_events]
        changed = self._changed[record.id]
        changed.set()
        self._changed[record.id] = asyncio.Event()

    async def event(self, job_id: str, payload: bytes, progress: Progress) -> int:
        record = self._records.get(job_id)
        if record is None or record.state != RUNNING:
            return 0
        record.sequence += 1
        record.progress = progress
        self._append(record, JobEvent(record.sequence, payload))
        return record.sequence

    async def finish(self, job_id: str, state: str, now: float, ttl_seconds: float, result: bytes | None,
                     error: bytes, claim: Claim | None) -> bool:
        record = self._records.get(job_id)
        if record is None or record.done:
            return False
        assert state in TERMINAL
        record.sequence += 1
        record.state, record.ended, record.expires, record.error = state, now, now + ttl_seconds, error
        if result is not None:
            self._results[job_id] = result
        self._requests.pop(job_id, None)  # only a run reads it: an ended job runs no more
        self._append(record, JobEvent(record.sequence, terminal=True))
        return True

    async def ack(self, claim: Claim) -> None:
        pass

    async def webhook(self, job_id: str, state: str, attempts: int, http_status: int, error: str) -> None:
        record = self._records.get(job_id)
        if record is not None:
            record.webhook_state, record.webhook_attempts = state, attempts
            record.webhook_http_status, record.webhook_error = http_status, error

    async def events(self, job_id: str, after: int, wait_seconds: float) -> list[JobEvent]:
        changed = self._changed.get(job_id)
        found = [e for e in self._events.get(job_id, []) if e.sequence > after]
        if found or changed is None:
            return found
        try:
            await asyncio.wait_for(changed.wait(), wait_seconds)
        except TimeoutError:
            return []
        return [e for e in self._events.get(job_id, []) if e.sequence > after]

    async def list(self, owner: str, offset: int, limit: int) -> tuple[list[JobRecord], int | None]:
        now = time.time()
        mine = [r for r in self._records.values() if r.owner == owner and not (r.done and r.expires <= now)]
        mine.sort(key=lambda r: r.created, reverse=True)
        page = [replace(r) for r in mine[offset:offset + limit]]
        return page, offset + limit if offset + limit < len(mine) else None

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
            self._purger = None
