"""What every metrics module shares: the histogram buckets, and no `_created` series."""

from __future__ import annotations

from prometheus_client import disable_created_metrics

# One set for every latency, from 0.5 ms (one network call) to 600 s (a full-schedule edit
# behind a queue); the client library's default stops at 10 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# No `<name>_created` series: they would double the series count and nothing reads them.
disable_created_metrics()
