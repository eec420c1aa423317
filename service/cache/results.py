"""The result cache: lookups, single-flight and request_id records over one CacheStore.

- A seeded request is looked up by its fingerprint (service/cache/keys.py); a hit is
  returned as stored, byte for byte, and runs nothing.
- Single-flight: identical requests in flight at once run the loop once. In a process,
  duplicates await the first one's future. Across processes sharing Redis, the first takes
  a lock (SET NX PX, token-checked release); the others poll for the result until it
  appears, or the lock goes away without one, or `lock_seconds` pass: then they compute.
- request_id (AIP-155): the first response to an id is kept, in its own key namespace,
  with the fingerprint of the request it answered. A repeat of the same request gets that
  response (seeded or not); the same id with a different request (other parameters,
  another model, or the same model after an update) gets RequestIdConflict, and the
  record stays as it was.
- Every store call goes through FailOpen: when the store is down, edits run uncached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from service.backends.base import ModelInfo
from service.cache.codec import CorruptEntry, Entry, decode_entry, encode_entry
from service.cache.failopen import FailOpen
from service.cache.keys import KeySpace, RequestKey
from service.cache.stats import CacheStats
from service.cache.store import CacheStore
from service.errors import Cancelled, DeadlineExceeded, RequestIdConflict
from service.requests import EditOutcome, StageTimings

log = logging.getLogger(__name__)
Compute = Callable[[], Awaitable[EditOutcome]]
POLL_FIRST, POLL_MAX = 0.01, 0.05  # seconds between a waiting duplicate's looks at the store


class _LeaderGone(Exception):
    """The edit a duplicate waited for was cancelled or timed out: the duplicate runs its own."""


class ResultCache:
    def __init__(self, store: CacheStore, *, ttl_seconds: float, max_entry_bytes: int, key_prefix: str,
                 lock_seconds: float, timeout: float, retry_seconds: float):
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.max_entry_bytes = max_entry_bytes
        self.lock_seconds = lock_seconds
        self.keys = KeySpace(key_prefix)
        self.stats = CacheStats()
        self.guard = FailOpen(self.stats, timeout, retry_seconds)
        self._inflight: dict[str, asyncio.Future[Entry]] = {}

    async def run(self, key: RequestKey, model: ModelInfo, compute: Compute, deadline: float | None = None) -> EditOutcome:
        """The response to the request `key`: from the cache, from an identical edit in
        flight, or from `compute` (which runs the loop). deadline: time.monotonic() or None."""
        if not key.seeded and not key.request_id:
            self.stats.uncacheable += 1
            return await compute()

        async def run_loop() -> Entry:
            self.stats.misses += 1
            return Entry(key.fingerprint, await compute())

        async def results() -> Entry:
            if not key.seeded:
                return await run_loop()
            entry, _ = await self._single_flight(self.keys.result(key.fingerprint), model, run_loop, deadline)
            return entry

        if not key.request_id:
            entry = await results()
        else:
            entry, replayed = await self._single_flight(self.keys.request(key.request_id), model, results, deadline)
            if entry.fingerprint != key.fingerprint:
                self.stats.request_id_conflicts += 1
                raise RequestIdConflict(f"{key.request_id!r} was already used for a different request; "
                                        f"send a new request_id with a new request (ids are kept {self.ttl_seconds:g} s)")
            self.stats.request_id_replays += replayed
        if not entry.outcome.cached:
            return entry.outcome
        return dataclasses.replace(entry.outcome, timings=StageTimings(), request_id=key.request_id)

    async def _single_flight(self, key: str, model: ModelInfo, compute: Callable[[], Awaitable[Entry]],
                             deadline: float | None) -> tuple[Entry, bool]:
        """The entry at `key`, computed once for every caller waiting on it; and whether it
        was reused (read from the store or shared: its outcome says cached=True)."""
        while True:
            pending = self._inflight.get(key)
            if pending is None:
                break
            try:
                entry = await _wait(asyncio.shield(pending), deadline)
            except _LeaderGone:
                continue  # the first caller gave up; the next one in line runs the edit
            self.stats.coalesced += 1
            return _as_cached(entry), True
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            entry, reused = await self._load_or_lead(key, model, compute, deadline)
        except BaseException as exc:
            gone = isinstance(exc, asyncio.CancelledError | Cancelled | DeadlineExceeded)
            future.set_exception(_LeaderGone() if gone else exc)
            future.exception()  # retrieved: nobody waiting is not an error
            raise
        else:
            future.set_result(entry)
        finally:
            del self._inflight[key]
        return entry, reused

    async def _load_or_lead(self, key: str, model: ModelInfo, compute: Callable[[], Awaitable[Entry]],
                            deadline: float | None) -> tuple[Entry, bool]:
        entry = await self._load(key, model)
        if entry is not None:
            self.stats.hits += 1
            return entry, True
        lock, token = self.keys.lock(key), secrets.token_hex(16)
        # fail-open: with the store down, go on as if the lock were ours
        holding = await self.guard.call("lock", lambda: self.store.acquire_lock(lock, token, self.lock_seconds), True)
        if not holding:
            give_up = time.monotonic() + self.lock_seconds
            entry = await self._follow(key, lock, model, give_up if deadline is None else min(give_up, deadline))
            if entry is not None:
                self.stats.coalesced += 1
                return entry, True
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("deadline exceeded while an identical edit was running elsewhere")
            # the other edit failed, was cancelled, stored nothing or outlived the lock: run it
            # here, without waiting in line for the lock again
        try:
            entry = await compute()
            await self._save(key, entry)
            return entry, False
        finally:
            if holding:
                await self.guard.call("unlock", lambda: self.store.release_lock(lock, token), False)

    async def _follow(self, key: str, lock: str, model: ModelInfo, until: float) -> Entry | None:
        """Polls for the entry another process is computing while it holds `lock`."""
        delay = POLL_FIRST
        while time.monotonic() < until:
            await asyncio.sleep(min(delay, max(0.0, until - time.monotonic())))
            delay = min(delay * 1.5, POLL_MAX)
            entry = await self._load(key, model)
            if entry is not None:
                return entry
            if not await self.guard.call("exists", lambda: self.store.exists(lock), False):
                return await self._load(key, model)  # stored just before the lock went
        return None

    async def _load(self, key: str, model: ModelInfo) -> Entry | None:
        value = await self.guard.call("get", lambda: self.store.get(key), None)
        if value is None:
            return None
        try:
            # a request_id record is read whichever model it answered: run() compares its
            # fingerprint and answers a conflict, never a miss that would overwrite it
            return decode_entry(value, model, check_model=not self.keys.is_request(key))
        except CorruptEntry as exc:
            self.stats.errors += 1
            log.warning("ignoring the cache entry %s: %s", key, exc)
            return None

    async def _save(self, key: str, entry: Entry) -> None:
        value = encode_entry(entry)
        if len(value) > self.max_entry_bytes:
            self.stats.too_large += 1
            return
        stored = await self.guard.call("set", lambda: self.store.set(key, value, self.ttl_seconds), None)
        if stored:
            self.stats.stored += 1
        elif stored is False:
            self.stats.too_large += 1

    async def available(self) -> bool:
        """Whether the store answers now (for the start-up log; never raises)."""
        return await self.guard.call("ping", lambda: _true_after(self.store.ping()), False)

    async def close(self) -> None:
        await self.store.close()


def _as_cached(entry: Entry) -> Entry:
    return Entry(entry.fingerprint, dataclasses.replace(entry.outcome, cached=True))


async def _true_after(pending: Awaitable[None]) -> bool:
    await pending
    return True


async def _wait(pending: Awaitable[Entry], deadline: float | None) -> Entry:
    if deadline is None:
        return await pending
    try:
        return await asyncio.wait_for(pending, max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise DeadlineExceeded("deadline exceeded while waiting for an identical edit in flight") from None
