"""The result cache: lookups, single-flight and request_id records over one CacheStore.

- A seeded request is looked up by its fingerprint (service/cache/keys.py); a hit is
  returned as stored, byte for byte, and runs nothing.
- Single-flight: identical requests in flight at once run the loop once. In a process,
  duplicates await the first one's future. Across processes sharing Redis, the first takes
  a lock (SET NX PX, token-checked release) and renews it every third of `lock_seconds`
  while its edit waits and runs (a token-checked PEXPIRE); the others poll for the result
  until it appears or their deadline passes, or the lock goes away without one (the
  edit failed, or its process died and stopped renewing): then they compute.
- request_id (AIP-155): the first response to an id is kept, in its own key namespace,
  with the fingerprint of the request it answered. A repeat of the same request gets that
  response (seeded or not); the same id with a different request (other parameters,
  another model, or the same model after an update) gets RequestIdConflict, and the
  record stays as it was. A record is never overwritten (SET NX): when one appeared while
  this edit ran (another replica's retry that could not see our lock), that one is the
  answer. Records are kept up to `max_request_bytes` (any response the server can send),
  not only up to the entry limit; one that cannot be kept is counted and logged.
- Every store call goes through FailOpen: when the store is down, edits run uncached.
"""

from __future__ import annotations

import asyncio
import contextlib
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
RENEWALS_PER_LOCK = 3  # a held lock is renewed this many times per lifetime
UNRECORDED_LOG_INTERVAL = 30.0  # seconds between warnings about request_id records not kept


class _LeaderGone(Exception):
    """The edit a duplicate waited for was cancelled or timed out: the duplicate runs its own."""


class ResultCache:
    """Results and request_id records over a CacheStore, single-flight for identical edits.

    Long: its steps (look up, lead or follow, record, renew the lock) share one lock protocol and one key space.
    """

    def __init__(self, store: CacheStore, *, ttl_seconds: float, max_entry_bytes: int, key_prefix: str,
                 lock_seconds: float, timeout: float, retry_seconds: float, max_request_bytes: int | None = None):
        """max_request_bytes: largest request_id record kept (None: no limit but the store's).
        max_entry_bytes bounds results only: a request_id record is a promise to a client."""
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.max_entry_bytes = max_entry_bytes
        self.max_request_bytes = max_request_bytes
        self.lock_seconds = lock_seconds
        self.keys = KeySpace(key_prefix)
        self.stats = CacheStats()
        self.guard = FailOpen(self.stats, timeout, retry_seconds)
        self._inflight: dict[str, asyncio.Future[Entry]] = {}
        self._unrecorded_logged_at: float | None = None
        self._unrecorded_since_log = 0

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
            entry, replayed = await self._single_flight(self.keys.request(key.request_id, key.tenant), model, results,
                                                         deadline)
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
        while not await self.guard.call("lock", lambda: self.store.acquire_lock(lock, token, self.lock_seconds), True):
            entry = await self._follow(key, lock, model, deadline)
            if entry is not None:
                self.stats.coalesced += 1
                return entry, True
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("deadline exceeded while an identical edit was running elsewhere")
            # the lock went without an entry: the other edit failed, was cancelled or its
            # process died (its lock expired unrenewed). Take the lock and run it here, or
            # follow whoever took it first.
        renewal = asyncio.create_task(self._renew(lock, token))
        try:
            entry = await compute()
            kept = await self._save(key, entry, model)
            if kept is not None:
                return _as_cached(kept), True  # a record stored meanwhile elsewhere is the answer
            return entry, False
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            await self.guard.call("unlock", lambda: self.store.release_lock(lock, token), False)

    async def _renew(self, lock: str, token: str) -> None:
        """Keeps `lock` alive while its edit waits and runs; cancelled when the edit ends.

        If this process dies (or its event loop stalls), renewals stop and the lock expires
        within lock_seconds: duplicates elsewhere then compute it themselves.
        """
        while True:
            await asyncio.sleep(self.lock_seconds / RENEWALS_PER_LOCK)
            renewed = await self.guard.call(
                "renew lock", lambda: self.store.extend_lock(lock, token, self.lock_seconds), None)
            if renewed is False:  # expired (a stall) and maybe taken by another replica: not ours
                log.warning("single-flight lock %s expired before it was renewed; an identical edit may run "
                            "elsewhere too (a request_id record is still never overwritten)", lock)
                return

    async def _follow(self, key: str, lock: str, model: ModelInfo, deadline: float | None) -> Entry | None:
        """Polls for the entry another process is computing while it holds `lock` (renewed
        for as long as that edit runs), until the entry appears, the lock goes or `deadline`."""
        delay = POLL_FIRST
        while deadline is None or time.monotonic() < deadline:
            wait = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(wait)
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

    async def _save(self, key: str, entry: Entry, model: ModelInfo) -> Entry | None:
        """Stores `entry`; for a request_id record, only if none is there (never overwritten),
        and returns the record already there instead, if one is."""
        value = encode_entry(entry)
        request = self.keys.is_request(key)
        limit = self.max_request_bytes if request else self.max_entry_bytes  # None: no limit of our own
        if limit is not None and len(value) > limit:
            self.stats.too_large += 1
            if request:
                self._unrecorded(f"{len(value)} bytes is over the request_id record limit of "
                                 f"{self.max_request_bytes} bytes")
            return None
        if not request:  # a result: the same request always makes the same bytes, so a plain SET
            stored = await self.guard.call("set", lambda: self.store.set(key, value, self.ttl_seconds), None)
            if stored:
                self.stats.stored += 1
            elif stored is False:
                self.stats.too_large += 1
            return None
        added, existing = await self.guard.call("add", lambda: self.store.add(key, value, self.ttl_seconds),
                                                (None, None))
        if existing is not None:
            try:
                return decode_entry(existing, model, check_model=False)
            except CorruptEntry as exc:
                self.stats.errors += 1
                log.warning("ignoring the cache entry %s: %s", key, exc)
                self._unrecorded("an unreadable record holds its key")
                return None
        if added:
            self.stats.stored += 1
        elif added is False:
            self.stats.too_large += 1
            self._unrecorded("the cache declined it (larger than the memory cache)")
        else:
            self._unrecorded("the cache is unavailable")
        return None

    def _unrecorded(self, reason: str) -> None:
        """A request_id record not kept: a retry of that request will run the edit again."""
        self.stats.request_id_unrecorded += 1
        self._unrecorded_since_log += 1
        now = time.monotonic()
        if self._unrecorded_logged_at is None or now - self._unrecorded_logged_at >= UNRECORDED_LOG_INTERVAL:
            log.warning("request_id record not kept (%s); a retry with that id runs the edit again: "
                        "%d record(s) not kept since the last report", reason, self._unrecorded_since_log)
            self._unrecorded_logged_at = now
            self._unrecorded_since_log = 0

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
