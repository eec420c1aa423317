"""The edit service: run a planned edit: admit, decode, look up the cache, run the SDEdit loop
in the batch scheduler of its shape, encode, store.

Transport-free, and it plans nothing: the call pipeline (service/pipeline/calls.py) plans each
request once with `plan`, and the doors call `edit` or `stream` with that RequestPlan. A cache
hit (or a duplicate of an edit in flight) never takes an admission slot. An admitted edit runs
as a trajectory in the batch scheduler of its shape (service/batching/), which shares one
network call per step between every active edit of that shape and checks, before every call,
whether each edit's caller cancelled or its deadline passed; such an edit leaves within one
step and its admission slot is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from service.backends.registry import LoadedModel, ModelRegistry
from service.batching import SchedulerRegistry
from service.cache import RequestKey, ResultCache, request_key
from service.config import Settings
from service.errors import Cancelled, DeadlineExceeded
from service.pipeline.admission import Admission, edit_budget_bytes
from service.pipeline.encoding import encode_outcome
from service.pipeline.observer import EditServiceObserver
from service.pipeline.plan import Planner, RequestPlan, decode_job
from service.pipeline.procmem import rss_bytes
from service.pipeline.progress import ProgressCallback, ProgressRelay, with_progress
from service.requests import EditJob, EditOutcome, EditRequestData, ProgressUpdate
from service.sde import EditCancelled, EditTrajectory, GaussianNoise
from service.tenancy.tenants import ANONYMOUS, Tenant

log = logging.getLogger(__name__)


class EditService:
    def __init__(self, settings: Settings, registry: ModelRegistry, cache: ResultCache | None,
                 metrics: EditServiceObserver):
        """metrics: told of every edit and tick (service/metrics/ Metrics)."""
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.baseline_bytes = rss_bytes()  # the process with its models loaded
        self.admission = Admission(settings.max_active_edits, settings.max_queue,
                                   edit_budget_bytes(settings, self.baseline_bytes))
        self.planner = Planner(registry, settings, self.admission.budget_bytes)
        self._decodes = asyncio.Semaphore(settings.max_decodes)
        # preview images are encoded here, never on a batch scheduler's thread (progress.py ProgressRelay)
        self._previews = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="sdedit-preview")
        self.metrics = metrics
        self.schedulers = SchedulerRegistry(settings, self.metrics.timed_network, self.metrics.batch_tick)
        self.metrics.watch_edits(self.admission, registry, cache, lambda: self.schedulers.active)

    def plan(self, req: EditRequestData) -> RequestPlan:
        """The request checked and planned (service/pipeline/plan.py): UNAVAILABLE while draining,
        else its InvalidArgument, or its plan. The call pipeline calls this once per request."""
        self.admission.check_open()
        return self.planner.plan(req)

    async def edit(self, plan: RequestPlan, deadline: float | None = None, on_progress: ProgressCallback | None = None,
                   tenant: Tenant = ANONYMOUS) -> EditOutcome:
        """Runs one planned edit. deadline: time.monotonic() value, or None. tenant: who asked (its
        request_ids are its own; its share of the batch follows its weight).

        on_progress is called after every step, in step order, from the batch scheduler's thread
        or (an update with preview images, and those behind it) a preview encoder's thread; every
        update has been handed to it before this returns.
        """
        received = time.perf_counter()
        self.admission.check_open()
        model = plan.model
        # admission on the plan's cost (nothing decoded yet), then the decode
        ticket = self.admission.reserve(plan.cost.held_bytes)
        try:
            async with self._decodes:
                job, key = await asyncio.to_thread(self._prepare, plan, tenant.name)
            self.metrics.decoded(model.info.name, job.decode_seconds)

            async def run() -> EditOutcome:
                async with ticket.run(plan.cost.running_bytes) as queue_seconds:
                    self.metrics.admitted(queue_seconds)
                    outcome = await self._run_batched(job, model, deadline, on_progress, tenant)
                outcome.timings.queue_seconds = queue_seconds
                return outcome

            if self.cache is None or key is None:
                outcome = await run()
            else:
                outcome = await self.cache.run(key, model.info, run, deadline)
        finally:
            ticket.release()
        outcome.timings.decode_seconds = job.decode_seconds
        outcome.timings.total_seconds = time.perf_counter() - received
        self.metrics.edit_finished(outcome, tenant.name)
        return outcome

    def _prepare(self, plan: RequestPlan, tenant: str = "") -> tuple[EditJob, RequestKey | None]:
        """Decoding and the cache key: CPU work, run off the event loop."""
        job = decode_job(plan, self.settings)
        return job, None if self.cache is None else request_key(job, plan.model.info, tenant)

    def stream(self, plan: RequestPlan, deadline: float | None = None,
               tenant: Tenant = ANONYMOUS) -> AsyncIterator[ProgressUpdate | EditOutcome]:
        """Yields progress updates, then the outcome. Closing the iterator cancels the edit."""
        return with_progress(lambda on_progress: self.edit(plan, deadline, on_progress, tenant),
                             on_drop=self.metrics.progress_dropped)

    async def _run_batched(self, job: EditJob, model: LoadedModel, deadline: float | None,
                           on_progress: ProgressCallback | None, tenant: Tenant = ANONYMOUS) -> EditOutcome:
        """Runs the edit in its shape's batch scheduler; a cancelled or timed-out edit leaves
        before the scheduler's next network call, and its admission slot is held until then.
        The scheduler's EditCancelled becomes DeadlineExceeded or Cancelled here."""
        started = time.perf_counter()
        stop = threading.Event()
        timed_out = False

        def should_stop() -> bool:
            nonlocal timed_out
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
            return timed_out or stop.is_set()

        relay = None if on_progress is None else ProgressRelay(on_progress, started, self._previews)
        log.debug("running the SDEdit loop: model %s, %d sample(s), %d repeat(s) x %d steps", job.model_name,
                  len(job.seeds), job.params.repeats, job.params.steps)
        trajectory = await asyncio.to_thread(self._trajectory, job, model)
        scheduler = self.schedulers.get(model, trajectory.shape)
        future = asyncio.wrap_future(scheduler.submit(trajectory, should_stop, relay and relay.step, tenant.name,
                                                      tenant.weight, deadline))
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()  # the scheduler drops the edit before its next network call
            with contextlib.suppress(BaseException):
                await future  # hold the slot until the edit has really left
            raise
        except EditCancelled as exc:
            if timed_out:
                raise DeadlineExceeded(f"deadline exceeded: {exc}") from exc
            raise Cancelled(f"cancelled: {exc}") from exc
        if relay is not None:
            await asyncio.wrap_future(relay.drained())  # its last previews reach the reader before the result
        sde_seconds = time.perf_counter() - started
        return await asyncio.to_thread(encode_outcome, job, model.info, result, sde_seconds)

    @staticmethod
    def _trajectory(job: EditJob, model: LoadedModel) -> EditTrajectory:
        rngs = [GaussianNoise(seed) for seed in job.seeds]
        return EditTrajectory(model.schedule, job.guide, job.mask, job.params, rngs, job.levels)

    async def aclose(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self.schedulers.close()
        self._previews.shutdown(wait=True)
        self.registry.close()
