"""Jobs: submit, read, watch, cancel, list; every replica runs `job_workers` workers
(worker.py) that run the queued jobs' stored plans.

The replica that ends a job (its worker, or the one answering CancelJob) delivers its
completion webhook, if it has one, in the background (service/jobs/webhooks/).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from service.config import Settings
from service.errors import Cancelled, InvalidArgument, NotFound, Unavailable
from service.jobs.observer import JobsObserver
from service.jobs.records import CANCELLED, JobCodec, JobEvent, JobRecord, is_job_id, new_job_id
from service.jobs.store import JobStore, JobStoreUnavailable
from service.jobs.webhooks import Webhooks
from service.jobs.worker import JobWorkers
from service.pipeline.editing import EditService
from service.pipeline.plan import RequestPlan, encode_plan
from service.tenancy.tenants import Tenant

log = logging.getLogger(__name__)
MAX_PAGE = 1000
DEFAULT_PAGE = 50
MAX_OFFSET_DIGITS = 9  # a page token is an offset into the owner's jobs: 0 to 999,999,999
LOG_EVERY_SECONDS = 10.0


@dataclass(frozen=True)
class JobEnd:
    """The last thing WatchJob sends: the job's terminal event, with its record and result."""

    sequence: int
    record: JobRecord


class JobManager:
    def __init__(self, settings: Settings, store: JobStore, service: EditService, codec: JobCodec,
                 webhooks: Webhooks | None = None, tenant_of: Callable[[str], Tenant | None] | None = None,
                 observer: JobsObserver | None = None, hold: Callable[[Tenant], Awaitable[object | None]] | None = None):
        """tenant_of(name): the tenant a job's owner names now (None: unknown, e.g. removed from
        the tokens file): its job runs with that tenant's weight in the batch scheduler's fair share.
        observer: told of submissions, runs and ends (service/metrics/jobs.py); None: the service's metrics.
        hold(tenant): a place in the tenant's max_in_flight for a job's run (service/tenancy/auth.py
        Gate.hold); None: runs hold none."""
        self.settings, self.store, self.service, self.codec = settings, store, service, codec
        self.observer: JobsObserver = observer if observer is not None else service.metrics
        self.tenant_of = tenant_of
        self.webhooks = webhooks  # None: webhook URLs are refused
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{new_job_id()[:8]}"
        self.workers = JobWorkers(settings, store, service, codec, self.consumer, self.observer, self._ended, tenant_of, hold)
        self._logged = -LOG_EVERY_SECONDS  # when a store failure was last logged (time.monotonic())

    @property
    def kind(self) -> str:
        return self.store.kind

    async def start(self) -> None:
        try:
            await self.store.open()
        except JobStoreUnavailable as exc:  # workers retry; SubmitEdit answers UNAVAILABLE meanwhile
            log.warning("jobs: %s; workers will keep trying", exc)
        self.workers.start()

    # --- the API ------------------------------------------------------------------------------

    def check_webhook(self, webhook_url: str, owner: str = "") -> None:
        """A job's webhook URL, checked before the job is charged or queued (InvalidArgument)."""
        if webhook_url:
            if self.webhooks is None:
                raise InvalidArgument("job.webhook_url", "this service delivers no webhooks")
            self.webhooks.check(webhook_url, owner)

    async def submit(self, plan: RequestPlan, priority: int = 0, owner: str = "", webhook_url: str = "") -> JobRecord:
        """Queues a planned edit (its webhook URL checked by check_webhook): the job stores the
        plan, and the worker that claims it runs it as it was planned here."""
        record = JobRecord(id=new_job_id(), owner=owner, priority=priority, created=time.time(),
                           webhook_url=webhook_url, webhook_state="waiting" if webhook_url else "")
        await self._store(self.store.submit(record, encode_plan(plan), self.settings.job_ttl_seconds))
        self.observer.job_submitted()
        self.workers.wake.set()
        log.info("job %s queued (priority %d)", record.id[:8], priority)
        return record

    async def get(self, job_id: str, owner: str = "", with_result: bool = True) -> JobRecord:
        record = await self._store(self.store.get(job_id, with_result=with_result)) if is_job_id(job_id) else None
        if record is None or record.owner != owner:
            raise NotFound(f"job {job_id[:64]!r} not found (unknown, or expired {self.settings.job_ttl_seconds:g} s after it ended)")
        return record

    async def cancel(self, job_id: str, owner: str = "") -> JobRecord:
        record = await self.get(job_id, owner, with_result=False)
        if not record.done:
            error = self.codec.encode_error(Cancelled("cancelled: the job was cancelled (CancelJob)"))
            if await self._store(self.store.finish(job_id, CANCELLED, time.time(), self.settings.job_ttl_seconds,
                                                   None, error, None)):
                self._ended(record, CANCELLED)
            task = self.workers.running.get(job_id)
            if task is not None:  # running here: stop it now (elsewhere: within job_poll_seconds)
                task.cancel()
        return await self.get(job_id, owner)

    @staticmethod
    def page_offset(page_token: str) -> int:
        """The offset a ListJobs page token stands for ("": 0); raises InvalidArgument."""
        token = page_token or "0"
        if not (token.isascii() and token.isdigit() and len(token) <= MAX_OFFSET_DIGITS):
            raise InvalidArgument("page_token", "is not a token from a previous ListJobsResponse")
        return int(token)

    async def list(self, owner: str = "", page_size: int = 0, offset: int = 0) -> tuple[list[JobRecord], int | None]:
        limit = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        return await self._store(self.store.list(owner, offset, limit))

    async def watch(self, job_id: str, after: int = 0, owner: str = "") -> AsyncIterator[JobEvent | JobEnd]:
        """Events after `after`, then the JobEnd (always, whatever `after` is)."""
        await self.get(job_id, owner, with_result=False)  # NOT_FOUND now, not after the first wait
        cursor = after
        while True:
            events = await self._store(self.store.events(job_id, cursor, self.settings.job_poll_seconds))
            if not events:
                record = await self.get(job_id, owner, with_result=False)
                if not record.done:
                    continue
                events = await self._store(self.store.events(job_id, cursor, 0))  # the end may have just come
                if not events:  # `after` was past the end, or the events expired
                    yield JobEnd(record.sequence, await self.get(job_id, owner))
                    return
            for event in events:
                if event.terminal:
                    yield JobEnd(event.sequence, await self.get(job_id, owner))
                    return
                cursor = event.sequence
                yield event

    def _ended(self, record: JobRecord, state: str) -> None:
        """This replica ended the job (in `state`): counted; its webhook goes out now, in the background."""
        self.observer.job_ended(state)
        if record.webhook_url and self.webhooks is not None:
            self.webhooks.deliver(self.store, self.codec, record)

    async def _store(self, pending):
        """The store's answer; its failure is UNAVAILABLE "job store unavailable" to the caller
        (never its address or its error: those go to the log, at most once per LOG_EVERY_SECONDS)."""
        try:
            return await pending
        except JobStoreUnavailable as exc:
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY_SECONDS:
                self._logged = now
                log.warning("jobs: a call failed: %s", exc)
            raise Unavailable("job store unavailable; retry later") from exc

    async def aclose(self) -> None:
        """Stops the workers: running jobs go back to queued (another replica runs them again)."""
        await self.workers.stop()
        if self.webhooks is not None:  # before the store closes: each records itself abandoned
            await self.webhooks.aclose()
        await self.store.close()
