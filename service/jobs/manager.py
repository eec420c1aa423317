"""Jobs: submit, read, watch, cancel, list; and the workers that run them.

Every replica runs `job_workers` workers. Each takes a claim from the store (a lapsed lease
first, then the next queued job, highest lane first), runs the job through the EditService
(`stream`: admission, the result cache and step-level batching apply as to any edit),
records each progress event, renews its lease every third of `job_lease_seconds`, and
stops the edit within one step when the job is cancelled or the lease was taken over.
A job a replica started `job_max_attempts` times without ending (each replica died on it)
fails rather than taking down the next one. The replica that ends a job (its worker, or the
one answering CancelJob) delivers its completion webhook, if it has one, in the background
(service/jobs/webhooks/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from service.config import Settings
from service.errors import Cancelled, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from service.jobs.records import CANCELLED, FAILED, SUCCEEDED, JobCodec, JobEvent, JobRecord, new_job_id
from service.jobs.store import Claim, JobStore, JobStoreUnavailable
from service.jobs.webhooks import Webhooks
from service.pipeline.editing import EditService
from service.pipeline.plan import RequestPlan, decode_plan, encode_plan
from service.pipeline.requests import EditOutcome
from service.tenancy.tenants import ANONYMOUS, Tenant

log = logging.getLogger(__name__)
BUSY_RETRY_SECONDS = 1.0  # a job refused by admission (every slot and queue place taken) waits this long
MAX_PAGE = 1000
DEFAULT_PAGE = 50


@dataclass(frozen=True)
class JobEnd:
    """The last thing WatchJob sends: the job's terminal event, with its record and result."""

    sequence: int
    record: JobRecord


class JobManager:
    def __init__(self, settings: Settings, store: JobStore, service: EditService, codec: JobCodec,
                 webhooks: Webhooks | None = None, tenant_of: Callable[[str], Tenant | None] | None = None):
        """tenant_of(name): the tenant a job's owner names now (None: unknown, e.g. removed from
        the tokens file): its job runs with that tenant's weight in the batch scheduler's fair share."""
        self.settings, self.store, self.service, self.codec = settings, store, service, codec
        self.tenant_of = tenant_of
        self.webhooks = webhooks  # None: webhook URLs are refused
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{new_job_id()[:8]}"
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._running: dict[str, asyncio.Task] = {}  # job id -> its edit, on this replica
        self._stopping = False

    @property
    def kind(self) -> str:
        return self.store.kind

    async def start(self) -> None:
        try:
            await self.store.open()
        except JobStoreUnavailable as exc:  # workers retry; SubmitEdit answers UNAVAILABLE meanwhile
            log.warning("jobs: %s; workers will keep trying", exc)
        self._workers = [asyncio.create_task(self._work(i), name=f"job-worker-{i}") for i in range(self.settings.job_workers)]

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
        self.service.metrics.job_submitted()
        self._wake.set()
        log.info("job %s queued (priority %d)", record.id[:8], priority)
        return record

    async def get(self, job_id: str, owner: str = "", with_result: bool = True) -> JobRecord:
        record = await self._store(self.store.get(job_id, with_result=with_result)) if job_id else None
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
            task = self._running.get(job_id)
            if task is not None:  # running here: stop it now (elsewhere: within job_poll_seconds)
                task.cancel()
        return await self.get(job_id, owner)

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
        self.service.metrics.job_ended(state)
        if record.webhook_url and self.webhooks is not None:
            self.webhooks.deliver(self.store, self.codec, record)

    @staticmethod
    async def _store(pending):
        try:
            return await pending
        except JobStoreUnavailable as exc:
            raise Unavailable(str(exc)) from exc

    # --- the workers --------------------------------------------------------------------------

    async def _work(self, index: int) -> None:
        failures = 0
        while not self._stopping and not self.service.admission.draining:
            try:
                claim = await self.store.claim(self.consumer, self.settings.job_lease_seconds)
                failures = 0
            except JobStoreUnavailable as exc:
                failures += 1
                if failures == 1:
                    log.warning("jobs: %s; retrying", exc)
                await asyncio.sleep(min(30.0, self.settings.job_poll_seconds * 2 ** min(failures, 6)))
                continue
            if claim is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.job_poll_seconds)
                continue
            try:
                await self._run(claim)
            except JobStoreUnavailable as exc:  # the entry stays pending: this or another replica retries it
                log.warning("jobs: job %s: %s; left for a retry after the lease", claim.job_id[:8], exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("jobs: worker %d failed on job %s", index, claim.job_id[:8])

    async def _run(self, claim: Claim) -> None:
        settings = self.settings
        record = await self.store.get(claim.job_id)
        if record is None or record.done:  # expired, or cancelled while queued
            await self.store.ack(claim)
            return
        if record.attempts >= settings.job_max_attempts:
            error = self.codec.encode_error(Unavailable(
                f"the job was started {record.attempts} times and its replica stopped each time (job_max_attempts)"))
            if await self.store.finish(claim.job_id, FAILED, time.time(), settings.job_ttl_seconds, None, error, claim):
                self._ended(record, FAILED)
            log.warning("job %s failed: started %d times without ending", claim.job_id[:8], record.attempts)
            return
        request = await self.store.request(claim.job_id)
        started = await self.store.start(claim.job_id, time.time(), settings.job_ttl_seconds)
        if started is None or request is None:
            await self.store.ack(claim)
            return
        log.info("job %s running (attempt %d%s)", claim.job_id[:8], started.attempts, ", reclaimed" if claim.reclaimed else "")
        metrics = self.service.metrics
        metrics.job_started("reclaimed" if claim.reclaimed else "first")
        metrics.job_waited(max(0.0, started.started - started.created))
        edit = asyncio.create_task(self._edit(claim.job_id, request, started.owner))
        self._running[claim.job_id] = edit
        keeper = asyncio.create_task(self._keep_lease(claim, edit))
        try:
            state, result, error = SUCCEEDED, None, b""
            try:
                outcome = await edit
                result = self.codec.encode_result(outcome)
            except asyncio.CancelledError:
                if self._stopping or asyncio.current_task().cancelling():
                    raise  # this worker is stopping
                # the edit was stopped: cancelled (the record has ended) or the lease lost (not ours now)
                current = await self.store.get(claim.job_id)
                if current is None or current.done:
                    await self.store.ack(claim)
                return
            except Unavailable as exc:
                if self.service.admission.draining:  # this replica is stopping: left pending for another one
                    await self.store.requeue(claim.job_id)
                    return
                state, error = FAILED, self.codec.encode_error(exc)
            except Exception as exc:  # noqa: BLE001 - a ServiceError, or a bug (INTERNAL, logged once by the encoder)
                state, error = FAILED, self.codec.encode_error(exc)
            ended = await self.store.finish(claim.job_id, state, time.time(), settings.job_ttl_seconds, result, error, claim)
            log.info("job %s %s%s", claim.job_id[:8], state, "" if ended else " (it had ended already; result dropped)")
            if ended:
                self._ended(started, state)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # the replica is stopping: another one runs it again
                await asyncio.shield(self.store.requeue(claim.job_id))
            raise
        finally:
            keeper.cancel()
            self._running.pop(claim.job_id, None)
            if not edit.done():
                edit.cancel()
                with contextlib.suppress(BaseException):
                    await edit

    async def _edit(self, job_id: str, request: bytes, owner: str = "") -> EditOutcome:
        plan = decode_plan(request, self.service.registry)
        tenant = (self.tenant_of(owner) if self.tenant_of is not None and owner else None) or ANONYMOUS
        if owner and tenant.name != owner:  # its tenant is gone from the tokens file: share as itself, weight 1
            tenant = Tenant(owner)
        while True:
            stream = self.service.stream(plan, tenant=tenant)
            try:
                async for item in stream:
                    if isinstance(item, EditOutcome):
                        return item
                    await self.store.event(job_id, self.codec.encode_event(item), item.progress)
            except ResourceExhausted:  # every slot and queue place taken by other calls: wait
                await asyncio.sleep(BUSY_RETRY_SECONDS)
            finally:
                await stream.aclose()
            raise AssertionError("the edit stream ended without an outcome")

    async def _keep_lease(self, claim: Claim, edit: asyncio.Task) -> None:
        """Renews the lease; stops the edit when the job was cancelled or the lease taken over."""
        renew_every = self.settings.job_lease_seconds / 3
        last_renewal = time.monotonic()
        while not edit.done():
            await asyncio.sleep(min(self.settings.job_poll_seconds, renew_every))
            try:
                if time.monotonic() - last_renewal >= renew_every:
                    if not await self.store.renew(claim, self.consumer):
                        log.warning("job %s: lease lost to another replica; stopping this run", claim.job_id[:8])
                        edit.cancel()
                        return
                    last_renewal = time.monotonic()
                record = await self.store.get(claim.job_id)
            except JobStoreUnavailable as exc:
                log.warning("jobs: cannot renew the lease of job %s: %s", claim.job_id[:8], exc)
                continue
            if record is None or record.done:
                edit.cancel()
                return

    async def aclose(self) -> None:
        """Stops the workers: running jobs go back to queued (another replica runs them again)."""
        self._stopping = True
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(BaseException):
                await task
        if self.webhooks is not None:  # before the store closes: each records itself abandoned
            await self.webhooks.aclose()
        await self.store.close()
