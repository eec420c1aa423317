"""Caps on open job event streams (gRPC WatchJob, HTTP GET /v1/jobs/{id}/events), per tenant and
in all. Each open stream polls the job store and holds a socket; without a cap one tenant's
unread streams slow every other tenant's calls. Both doors run WatchJob through the call
pipeline (service/pipeline/calls.py), which holds a slot here for the stream's whole life and
frees it however the stream ends (the job ended, the client went away, an error)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from service.errors import ResourceExhausted


class TooManyStreams(ResourceExhausted):
    """A new event stream beyond --max-event-streams or --max-event-streams-per-tenant."""

    reason = "TOO_MANY_EVENT_STREAMS"


class StreamSlots:
    """Counts open event streams; `hold` refuses one beyond either cap (TooManyStreams)."""

    def __init__(self, total: int, per_tenant: int):
        self.total = total
        self.per_tenant = per_tenant
        self.open = 0
        self.by_tenant: dict[str, int] = {}

    def of(self, tenant: str) -> int:
        return self.by_tenant.get(tenant, 0)

    @contextlib.contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        mine = self.of(tenant)
        if mine >= self.per_tenant:
            raise TooManyStreams(f"tenant {tenant!r} has {mine} event streams open, its cap "
                                 f"(--max-event-streams-per-tenant {self.per_tenant}); close one or retry later")
        if self.open >= self.total:
            raise TooManyStreams(f"{self.open} event streams are open, the server's cap (--max-event-streams "
                                 f"{self.total}); retry later")
        self.open += 1
        self.by_tenant[tenant] = mine + 1
        try:
            yield
        finally:
            self.open -= 1
            left = self.by_tenant[tenant] - 1
            if left:
                self.by_tenant[tenant] = left
            else:
                del self.by_tenant[tenant]
