"""Counters of the result cache: the hook a metrics module reads (no Prometheus here).

Read `EditService.cache.stats` (or call `snapshot()`) at scrape time; every field only
grows except `available`, which is False while the cache is failing open.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class CacheStats:
    hits: int = 0  # responses read from the cache
    coalesced: int = 0  # responses shared with an identical edit in flight (single-flight)
    misses: int = 0  # cacheable edits that ran the loop here
    uncacheable: int = 0  # unseeded edits without a request_id: never looked up
    stored: int = 0  # results and request_id records written
    too_large: int = 0  # responses over their limit (or declined by the store), not stored
    errors: int = 0  # failed or timed-out cache operations (each one skipped: fail-open)
    skipped: int = 0  # cache operations not attempted because the circuit was open
    request_id_replays: int = 0  # repeated request_ids answered with the first response
    request_id_conflicts: int = 0  # request_ids reused for a different request (ALREADY_EXISTS)
    request_id_unrecorded: int = 0  # request_id records not kept (too large, declined, cache down)
    available: bool = True  # False while the breaker is open (edits run uncached)

    def snapshot(self) -> dict[str, int | bool]:
        return dataclasses.asdict(self)
