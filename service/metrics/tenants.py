"""Metrics of the tenant policy (--auth-tokens-file): requests, refusals, work done, quota store errors.

The tenant label takes the tenant names of that file only, and "" for callers that are not
one (no token, a wrong one). TenantMetrics is the GateObserver of service/tenancy/auth.py and
the QuotaObserver of service/tenancy/quotas.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter


class TenantMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.tenant_requests_total = Counter("sdedit_tenant_requests", "edit requests by tenant, past authentication",
                                             ("tenant",), registry=r)
        self.tenant_rejections_total = Counter("sdedit_tenant_rejections", "calls refused by the tenant policy, by "
                                               "reason: unauthenticated, permission_denied, max_in_flight, "
                                               "work_per_minute", ("tenant", "reason"), registry=r)
        self.tenant_work_total = Counter("sdedit_tenant_work", "network work of each tenant's completed edits, in "
                                         "network calls x images (what work_per_minute limits)", ("tenant",), registry=r)
        self.quota_store_errors_total = Counter("sdedit_quota_store_errors", "quota checks the store (Redis) could not "
                                                "answer, by what was done: allowed (quota_fail_open) or refused",
                                                ("decision",), registry=r)

    def describe_tenants(self, names: Iterable[str]) -> None:
        """Every tenant's series shows from the start, at 0."""
        for name in names:
            self.tenant_requests_total.labels(name)
            self.tenant_work_total.labels(name)

    def tenant_request(self, tenant: str) -> None:
        self.tenant_requests_total.labels(tenant).inc()

    def tenant_rejected(self, tenant: str, reason: str) -> None:
        self.tenant_rejections_total.labels(tenant, reason).inc()

    def quota_store_error(self, decision: str) -> None:
        self.quota_store_errors_total.labels(decision).inc()

    def work_done(self, tenant: str, work: int) -> None:
        """A tenant's edit completed: its network calls x images."""
        self.tenant_work_total.labels(tenant).inc(work)
