"""The result cache's counters (service/cache/stats.py keeps them, Prometheus-free), read at scrape time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.cache import CacheStats

CACHE_REQUESTS = {"hit": "hits", "coalesced": "coalesced", "miss": "misses", "uncacheable": "uncacheable"}
CACHE_COUNTERS = {  # metric (without _total) -> (CacheStats field, help)
    "sdedit_cache_errors": ("errors", "failed or timed-out cache operations, each skipped (the cache fails open)"),
    "sdedit_cache_skipped": ("skipped", "cache operations not tried because the cache was failing open"),
    "sdedit_cache_stored": ("stored", "results and request_id records written to the cache"),
    "sdedit_cache_too_large": ("too_large", "responses over cache_max_entry_bytes (request_id records: the "
                               "message limit), or declined by the store, not stored"),
    "sdedit_cache_request_id_replays": ("request_id_replays", "repeated request_ids answered with the first response"),
    "sdedit_cache_request_id_conflicts": ("request_id_conflicts", "request_ids reused for a different request"),
    "sdedit_cache_request_id_unrecorded": ("request_id_unrecorded", "request_id records not kept (too large, "
                                           "declined or cache down): a retry of those runs the edit again"),
}


class CacheCollector(Collector):
    """The result cache's counters as metrics, read when scraped."""

    def __init__(self, stats: CacheStats):
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily("sdedit_cache_requests", "edit requests by what the result cache did: hit (read "
                                       "from the cache), coalesced (shared an identical edit in flight), miss (ran "
                                       "here), uncacheable (unseeded, no request_id)", labels=["result"])
        for result, field in CACHE_REQUESTS.items():
            requests.add_metric([result], getattr(self.stats, field))
        yield requests
        for name, (field, help_text) in CACHE_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=getattr(self.stats, field))
        yield GaugeMetricFamily("sdedit_cache_available", "1 while the cache answers, 0 while it fails open",
                                value=1.0 if self.stats.available else 0.0)
