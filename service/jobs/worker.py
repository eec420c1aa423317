"""The job workers of one replica: each takes a claim from the store (a lapsed lease first,
then the next queued job, highest lane first), runs the job's stored plan through the edit
service (`stream`: admission, the result cache and step-level batching apply as to any edit),
records each progress event, renews its lease every third of `job_lease_seconds`, and stops
the edit within one step when the job is cancelled or the lease was taken over. A job a
replica started `job_max_attempts` times without ending (each replica died on it) fails rather
than taking down the next one.

A running job holds a place in its tenant's `max_in_flight` (`hold`: the quota lease, renewed
every third of `quota_lease_seconds`, released when the run ends; its work was charged at
submit). A job whose tenant is at its limit is not started: it goes back, still queued, to the
end of its lane, and the worker claims the next job; a worker that meets again a job it put
back (every job it saw waits for its tenant) waits for a wake-up or `job_poll_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from service.config import Settings
from service.errors import QuotaExceeded, ResourceExhausted, Unavailable
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
                 tenant_of: Callable[[str], Tenant | None] | None = None,
                 hold: Callable[[Tenant], Awaitable[object | None]] | None = None):
        """ended(record, state): this replica ended a job (counted, its webhook sent);
        tenant_of(name): the tenant a job's owner names now (None: unknown); hold(tenant): a
        place in its max_in_flight for a run (a lease with release() and renew(); None: nothing
        held), raising QuotaExceeded while it is at its limit."""
        self.settings, self.store, self.service, self.codec = settings, store, service, codec
        self.consumer, self.observer, self.ended, self.tenant_of = consumer, observer, ended, tenant_of
        self.hold = hold
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

    async def _idle(self) -> None:
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), self.settings.job_poll_seconds)

    async def _work(self, index: int) -> None:
        failures = 0
        put_back: set[str] = set()  # jobs this worker put back since it last ran one
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
                put_back.clear()
                await self._idle()
                continue
            try:
                if not await self._run(claim):  # put back: its tenant is at max_in_flight
                    if claim.job_id in put_back:  # every job seen since waits for its tenant
                        put_back.clear()
                        await self._idle()
                    put_back.add(claim.job_id)
                    continue
                put_back.clear()
            except JobStoreUnavailable as exc:  # the entry stays pending: this or another replica retries it
                log.warning("jobs: job %s: %s; left for a retry after the lease", claim.job_id[:8], exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("jobs: worker %d failed on job %s", index, claim.job_id[:8])

    def _tenant(self, owner: str) -> Tenant:
        tenant = (self.tenant_of(owner) if self.tenant_of is not None and owner else None) or ANONYMOUS
        if owner and tenant.name != owner:  # its tenant is gone from the tokens file: share as itself, weight 1
            tenant = Tenant(owner)
        return tenant

    async def _hold(self, claim: Claim, record: JobRecord) -> tuple[bool, object | None]:
        """(True, the run's lease or None), or (False, None): the tenant is at max_in_flight
        (or its quota store refuses), and the job went back to the end of its lane."""
        if self.hold is None:
            return True, None
        try:
            return True, await self.hold(self._tenant(record.owner))
        except (QuotaExceeded, Unavailable):
            await self.store.defer(claim)
            return False, None

    async def _run(self, claim: Claim) -> bool:
        """Runs the claimed job (True), or puts it back (False: its tenant is at max_in_flight)."""
        record = await self.store.get(claim.job_id)
        if record is None or record.done:  # expired, or cancelled while queued
            await self.store.ack(claim)
            return True
        if record.attempts < self.settings.job_max_attempts:
            taken, lease = await self._hold(claim, record)
            if not taken:
                return False
        else:
            lease = None
        try:
            await self._run_held(claim, record, lease)
        finally:
            if lease is not None:
                lease.release()
                self.wake.set()  # a place came free: a worker waiting on this tenant may try again
        return True

    async def _run_held(self, claim: Claim, record: JobRecord, lease) -> None:
        settings = self.settings
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
        keeper = asyncio.create_task(self._keep_lease(claim, edit, lease), name=f"job-lease-{claim.job_id[:8]}")
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
        tenant = self._tenant(owner)
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

    async def _keep_lease(self, claim: Claim, edit: asyncio.Task, quota_lease=None) -> None:
        """Renews the lease (and the tenant's quota lease); stops the edit when the job was
        cancelled or the lease taken over."""
        renew_every = self.settings.job_lease_seconds / 3
        last_renewal = last_quota = time.monotonic()
        while not edit.done():
            await asyncio.sleep(min(self.settings.job_poll_seconds, renew_every))
            if quota_lease is not None and time.monotonic() - last_quota >= self.settings.quota_lease_seconds / 3:
                await quota_lease.renew()
                last_quota = time.monotonic()
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
