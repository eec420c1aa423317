"""Metrics of jobs (service/jobs/manager.py) and their completion webhooks (service/jobs/webhooks/).

Counted by the replica that did it. JobMetrics is the JobsObserver of service/jobs/observer.py
and the WebhookObserver of service/jobs/webhooks/.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from service.metrics.common import LATENCY_BUCKETS

JOB_STATES = ("succeeded", "failed", "cancelled")
RUN_KINDS = ("first", "reclaimed")
DELIVERY_OUTCOMES = ("delivered", "rejected", "exhausted", "refused", "unsigned", "expired", "abandoned", "error")


class JobMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.jobs_submitted_total = Counter("sdedit_jobs_submitted", "jobs queued by SubmitEdit on this replica", registry=r)
        self.jobs_ended_total = Counter("sdedit_jobs_ended", "jobs this replica ended, by final state: succeeded, failed, "
                                        "cancelled", ("state",), registry=r)
        self.job_runs_total = Counter("sdedit_job_runs", "job runs this replica started: first (a queued job) or "
                                      "reclaimed (a job whose replica died, after its lease)", ("kind",), registry=r)
        self.job_wait_seconds = Histogram("sdedit_job_wait_seconds", "from a job's submission to the start of the run "
                                          "that this replica began", buckets=LATENCY_BUCKETS, registry=r)
        self.webhook_deliveries_total = Counter("sdedit_webhook_deliveries", "job webhook deliveries by how they ended: "
                                                "delivered, rejected, exhausted, refused, unsigned, expired, abandoned",
                                                ("outcome",), registry=r)
        self.webhook_attempts_total = Counter("sdedit_webhook_attempts", "job webhook POSTs by result: 2xx, 3xx, 4xx, "
                                              "5xx, or error (no answer: network, TLS, timeout)", ("result",), registry=r)

        # every job state, run kind and delivery outcome shows from the start, at 0 (a rate() over
        # a series that appears with its first increment misses that increment)
        for state in JOB_STATES:
            self.jobs_ended_total.labels(state)
        for kind in RUN_KINDS:
            self.job_runs_total.labels(kind)
        for outcome in DELIVERY_OUTCOMES:
            self.webhook_deliveries_total.labels(outcome)

    # --- JobsObserver ------------------------------------------------------------------------

    def job_submitted(self) -> None:
        self.jobs_submitted_total.inc()

    def job_ended(self, state: str) -> None:
        self.jobs_ended_total.labels(state).inc()

    def job_started(self, kind: str) -> None:
        self.job_runs_total.labels(kind).inc()

    def job_waited(self, seconds: float) -> None:
        self.job_wait_seconds.observe(seconds)

    # --- WebhookObserver ---------------------------------------------------------------------

    def webhook_attempt(self, result: str) -> None:
        self.webhook_attempts_total.labels(result).inc()

    def webhook_delivery(self, outcome: str) -> None:
        self.webhook_deliveries_total.labels(outcome).inc()
