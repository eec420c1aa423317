"""Fail-open access to a cache backend: a bounded wait per call and a circuit breaker.

When the backend fails (or takes longer than `timeout`), the call answers its fallback
("not cached", "lock acquired") and the edit goes on uncached. After `failure_threshold`
failures in a row, or at once after a timeout, the circuit opens: for `retry_seconds` no
call touches the backend, so requests do not each pay a timeout. Then one call probes it; success closes the circuit
and caching resumes by itself. Failures are counted in CacheStats and logged at most once
per `log_interval`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.cache.stats import CacheStats
from service.cache.store import CacheTimeout, CacheUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class CircuitBreaker:
    """closed -> (threshold failures, or one slow one) -> open -> (retry_seconds) -> one probe
    -> closed or open."""

    def __init__(self, failure_threshold: int, retry_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None  # None = closed
        self._probe_at = 0.0

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        now = self._clock()
        if now < self._probe_at:
            return False
        # one probe per retry period; a probe that never reports (cancelled) cannot wedge it
        self._probe_at = now + self.retry_seconds
        return True

    def record_success(self) -> bool:
        """Returns True when this closed an open circuit."""
        was_open = self._opened_at is not None
        self._failures = 0
        self._opened_at = None
        return was_open

    def record_failure(self, slow: bool = False) -> bool:
        """Returns True when this opened the circuit. slow: a timeout, which opens it at once."""
        self._failures += 1
        if self._opened_at is None and (slow or self._failures >= self.failure_threshold):
            self._opened_at = self._clock()
            self._probe_at = self._opened_at + self.retry_seconds
            return True
        if self._opened_at is not None:
            self._probe_at = self._clock() + self.retry_seconds
        return False


class FailOpen:
    """Runs backend calls under a timeout and the breaker; failures become the fallback."""

    def __init__(self, stats: CacheStats, timeout: float, retry_seconds: float, failure_threshold: int = 3,
                 log_interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.stats = stats
        self.timeout = timeout
        self.breaker = CircuitBreaker(failure_threshold, retry_seconds, clock)
        self.log_interval = log_interval
        self._clock = clock
        self._last_log: float | None = None
        self._unlogged = 0

    async def call(self, operation: str, make: Callable[[], Awaitable[T]], fallback: T) -> T:
        if not self.breaker.allow():
            self.stats.skipped += 1
            return fallback
        try:
            result = await asyncio.wait_for(make(), self.timeout)
        except (CacheUnavailable, TimeoutError) as exc:
            self._failed(operation, exc)
            return fallback
        if self.breaker.record_success():
            self.stats.available = True
            log.warning("result cache reachable again; caching resumed")
        return result

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self._unlogged += 1
        if self.breaker.record_failure(slow=isinstance(exc, TimeoutError | CacheTimeout)):
            self.stats.available = False
        now = self._clock()
        if self._last_log is None or now - self._last_log >= self.log_interval:
            reason = str(exc) or f"no answer within {self.timeout:g} s"
            log.warning("result cache unavailable, edits run uncached: %d error(s) since the last report; last: %s: %s",
                        self._unlogged, operation, reason)
            self._last_log = now
            self._unlogged = 0
