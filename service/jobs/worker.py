"""The job workers of one replica: each takes a claim from the store (a lapsed lease first,
then the next queued job, highest lane first), runs the job's stored plan through the edit
service (`stream`: admission, the result cache and step-level batching apply as to any edit),
records each progress event, renews its lease every third of `job_lease_seconds`, and stops
the edit within one step when the job is cancelled or the lease was taken over. A job a
replica started `job_max_attempts` times without ending (each replica died on it) fails rather
than taking down the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from service.config import Settings
from service.errors import ResourceExhausted, Unavailable
from service.jobs.observer import JobsObserver
from service.jobs.records import FAILED, SUCCEEDED, JobCodec, JobRecord
from service.jobs.store import Claim, JobStore, JobStoreUnavailable
from service.pipeline.editing import EditService
from service.pipeline.plan import decode_plan
from service.requests import EditOutcome
from service.tenancy.tenants import ANONYMOUS, Tenant

log = logging.getLogger("service.jobs.manager")  # one logger for the jobs' lines, as before the split
BUSY_RETRY_SECONDS = 1.0  # a job refused by admission (every slot and queue place taken) waits this long


def _log_failure(task: asyncio.Task) -> None:
    """A background task's unexpected error, logged (and so retrieved) when nobody awaits it."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("jobs: %s failed", task.get_name(), exc_info=exc)


class JobWorkers:
    def __init__(self, settings: Settings, store: JobStore, service: EditService, codec: JobCodec, consumer: str,
                 observer: JobsObserver, ended: Callable[[JobRecord, str], None],
                 tenant_of: Callable[[str], Tenant | None] | None = None):
        """ended(record, state): this replica ended a job (counted, its webhook sent);
        tenant_of(name): the tenant a job's owner names now (None: unknown)."""
        self.settings, self.store, self.service, self.codec = settings, store, service, codec
        self.consumer, self.observer, self.ended, self.tenant_of = consumer, observer, ended, tenant_of
        self.wake = asyncio.Event()  # set when a job was submitted here: look now, not after job_poll_seconds
        self.running: dict[str, asyncio.Task] = {}  # job id -> its edit, on this replica
        self.stopping = False
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(i), name=f"job-worker-{i}") for i in range(self.settings.job_workers)]

    async def stop(self) -> None:
        """Running jobs go back to queued (another replica runs them again)."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _work(self, index: int) -> None:
        failures = 0
        while not self.stopping and not self.service.admission.draining:
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
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.job_poll_seconds)
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
                self.ended(record, FAILED)
            log.warning("job %s failed: started %d times without ending", claim.job_id[:8], record.attempts)
            return
        request = await self.store.request(claim.job_id)
        started = await self.store.start(claim.job_id, time.time(), settings.job_ttl_seconds)
        if started is None or request is None:
            await self.store.ack(claim)
            return
        log.info("job %s running (attempt %d%s)", claim.job_id[:8], started.attempts, ", reclaimed" if claim.reclaimed else "")
        self.observer.job_started("reclaimed" if claim.reclaimed else "first")
        self.observer.job_waited(max(0.0, started.started - started.created))
        edit = asyncio.create_task(self._edit(claim.job_id, request, started.owner))
        self.running[claim.job_id] = edit
        keeper = asyncio.create_task(self._keep_lease(claim, edit), name=f"job-lease-{claim.job_id[:8]}")
        keeper.add_done_callback(_log_failure)  # cancelled in the end, never awaited: its error is logged here
        try:
            state, result, error = SUCCEEDED, None, b""
            try:
                outcome = await edit
                result = self.codec.encode_result(outcome)
            except asyncio.CancelledError:
                if self.stopping or asyncio.current_task().cancelling():
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
                self.ended(started, state)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # the replica is stopping: another one runs it again
                await asyncio.shield(self.store.requeue(claim.job_id))
            raise
        finally:
            keeper.cancel()
            self.running.pop(claim.job_id, None)
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
