"""What the job manager tells about its jobs (service/metrics/jobs.py counts it)."""

from __future__ import annotations

from typing import Protocol


class JobsObserver(Protocol):
    def job_submitted(self) -> None: ...

    def job_ended(self, state: str) -> None:
        """This replica ended a job, in `state`: succeeded, failed or cancelled."""

    def job_started(self, kind: str) -> None:
        """This replica began a run of a job: `first` (a queued job) or `reclaimed` (after a lapsed lease)."""

    def job_waited(self, seconds: float) -> None:
        """From a job's submission to the start of the run this replica began."""
