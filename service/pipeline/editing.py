"""The edit service: validate, look up the cache, admit, run the SDEdit loop off the
event loop, encode, store.

Transport-free: gRPC handlers call `edit` or `stream` with plain requests. A cache hit
(or a duplicate of an edit in flight) never takes an admission slot. An admitted edit runs
as a trajectory in the batch scheduler of its shape (service/batching/), which shares one
network call per step between every active edit of that shape and checks, before every
call, whether each edit's caller cancelled or its deadline passed; such an edit leaves
within one step and its admission slot is freed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from service.backends.registry import LoadedModel, ModelRegistry
from service.batching import BatchScheduler
from service.cache import RequestKey, ResultCache, request_key
from service.config import Settings, SettingsError
from service.errors import Cancelled, DeadlineExceeded
from service.metrics import Metrics
from service.pipeline.admission import Admission
from service.pipeline.imaging import NPY_MEDIA_TYPE, PNG_MEDIA_TYPE, composite_kept, encode_npy, encode_png, to_pixels
from service.pipeline.plan import Planner, RequestPlan, decode_job
from service.pipeline.procmem import rss_bytes
from service.pipeline.requests import EditJob, EditOutcome, EditRequestData, OutputImage, ProgressUpdate, StageTimings
from service.sde import EditCancelled, EditResult, EditTrajectory, GaussianNoise, StepEvent
from service.tenancy.tenants import ANONYMOUS, Tenant

log = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressUpdate], None]
HEADROOM_BYTES = 128 << 20  # gRPC buffers, the cache's working copies, the interpreter's own growth
STREAM_BACKLOG = 64  # progress events kept for a slow StreamEdit reader; older ones are dropped
STREAM_PREVIEW_BYTES = 16 << 20  # preview images kept in it; past this, older previews lose their images


class ProgressBacklog:
    """The events a StreamEdit reader has not taken yet, bounded: a reader that stops reading
    must not let them pile up. Progress is cumulative, so dropping the oldest loses nothing the
    next event does not say; preview images (one per sample) are kept up to a byte bound,
    newest first. The result never goes through here, so it is never dropped."""

    def __init__(self, limit: int = STREAM_BACKLOG, preview_bytes: int = STREAM_PREVIEW_BYTES,
                 on_drop: Callable[[], None] | None = None):
        self.limit, self.preview_bytes = limit, preview_bytes
        self._items: collections.deque[ProgressUpdate] = collections.deque()
        self._ready = asyncio.Event()
        self._on_drop = on_drop or (lambda: None)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, update: ProgressUpdate) -> None:
        self._items.append(update)
        held = sum(len(image) for u in self._items for image in u.previews)
        for index, old in enumerate(self._items):
            if held <= self.preview_bytes or index == len(self._items) - 1:
                break
            if old.previews:
                held -= sum(len(image) for image in old.previews)
                self._items[index] = dataclasses.replace(old, previews=())
                self._on_drop()
        if len(self._items) > self.limit:
            self._items.popleft()
            self._on_drop()
        self._ready.set()

    async def get(self) -> ProgressUpdate:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def drain(self) -> list[ProgressUpdate]:
        items, self._items = list(self._items), collections.deque()
        return items


class MemoryBudgetError(SettingsError):
    """The configured budget does not even cover the process as it starts."""


def edit_budget_bytes(settings: Settings, baseline_bytes: int) -> int:
    """What the budget leaves for edits once the process, its models and a headroom are in."""
    budget = settings.memory_budget_bytes - baseline_bytes - HEADROOM_BYTES
    if budget <= 0:
        raise MemoryBudgetError(
            f"memory_budget_mib {settings.memory_budget_mib} does not cover the process as it starts "
            f"({baseline_bytes >> 20} MiB with its models, plus {HEADROOM_BYTES >> 20} MiB headroom): raise it")
    return budget


class EditService:
    def __init__(self, settings: Settings, registry: ModelRegistry, cache: ResultCache | None = None,
                 metrics: Metrics | None = None):
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.baseline_bytes = rss_bytes()  # the process with its models loaded
        self.admission = Admission(settings.max_active_edits, settings.max_queue,
                                   edit_budget_bytes(settings, self.baseline_bytes))
        self.planner = Planner(registry, settings, self.admission.budget_bytes)
        self._decodes = asyncio.Semaphore(settings.max_decodes)
        self.metrics = metrics or Metrics()
        self.metrics.watch_admission(self.admission)
        self.metrics.describe_models((m.info for m in registry.all()), registry.default)
        if cache is not None:
            self.metrics.watch_cache(cache.stats)
        self._schedulers: dict[tuple, BatchScheduler] = {}
        self._schedulers_lock = threading.Lock()
        self.metrics.watch_active_edits(lambda: sum(s.active for s in list(self._schedulers.values())))

    def plan(self, req: EditRequestData) -> RequestPlan:
        """The request checked and planned (service/pipeline/plan.py): UNAVAILABLE while draining,
        else its InvalidArgument, or its plan. The call pipeline calls this once per request."""
        self.admission.check_open()
        return self.planner.plan(req)

    async def edit(
        self,
        plan: RequestPlan,
        deadline: float | None = None,
        on_progress: ProgressCallback | None = None,
        tenant: Tenant = ANONYMOUS,
    ) -> EditOutcome:
        """Runs one planned edit. deadline: time.monotonic() value, or None. tenant: who asked (its
        request_ids are its own; its share of the batch follows its weight).

        on_progress is called from the batch scheduler's thread after every step.
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

    async def stream(self, plan: RequestPlan, deadline: float | None = None,
                     tenant: Tenant = ANONYMOUS) -> AsyncIterator[ProgressUpdate | EditOutcome]:
        """Yields progress updates, then the outcome. Closing the iterator cancels the edit."""
        loop = asyncio.get_running_loop()
        updates = ProgressBacklog(on_drop=self.metrics.progress_dropped)

        def on_progress(update: ProgressUpdate) -> None:
            loop.call_soon_threadsafe(updates.put, update)

        task = asyncio.create_task(self.edit(plan, deadline, on_progress, tenant))
        getter: asyncio.Task | None = None
        try:
            while True:
                getter = asyncio.create_task(updates.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                for update in updates.drain():
                    yield update
                yield task.result()  # raises the edit's error, if any
                return
        finally:
            if getter is not None:
                getter.cancel()  # the consumer may leave while it waits (a client cancel)
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def scheduler(self, model: LoadedModel, shape: tuple[int, ...]) -> BatchScheduler:
        """The batch scheduler of one (model, channels, height, width): edits of that shape
        share one network call per step (service/batching/)."""
        key = (model.info.name, *shape)
        with self._schedulers_lock:
            scheduler = self._schedulers.get(key)
            if scheduler is None:
                limit = self.settings.max_batch_images
                if model.info.max_batch_size:  # Triton's config bounds one call too
                    limit = min(limit, model.info.max_batch_size)
                scheduler = BatchScheduler("x".join(map(str, key)), self.metrics.timed_network(model.info.name, model.backend.predict_eps),
                                           limit, on_tick=self.metrics.batch_tick, pipeline_depth=self.settings.effective_pipeline_depth)
                self._schedulers[key] = scheduler
            return scheduler

    async def _run_batched(self, job: EditJob, model: LoadedModel, deadline: float | None,
                           on_progress: ProgressCallback | None, tenant: Tenant = ANONYMOUS) -> EditOutcome:
        """Runs the edit in its shape's batch scheduler; a cancelled or timed-out edit leaves
        before the scheduler's next network call, and its admission slot is held until then."""
        started = time.perf_counter()
        stop = threading.Event()
        timed_out = False

        def should_stop() -> bool:
            nonlocal timed_out
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
            return timed_out or stop.is_set()

        def on_step(event: StepEvent) -> None:
            if on_progress is None:
                return
            previews: tuple[bytes, ...] = ()
            if event.pred_original_sample is not None:
                previews = tuple(encode_png(to_pixels(np.clip(x, -1, 1))) for x in event.pred_original_sample)
            progress = dataclasses.replace(event.progress, elapsed_seconds=time.perf_counter() - started)
            on_progress(ProgressUpdate(progress, previews))

        log.debug("running the SDEdit loop: model %s, %d sample(s), %d repeat(s) x %d steps", job.model_name,
                  len(job.seeds), job.params.repeats, job.params.steps)
        trajectory = await asyncio.to_thread(self._trajectory, job, model)
        future = asyncio.wrap_future(self.scheduler(model, trajectory.shape).submit(trajectory, should_stop, on_step,
                                                                                     tenant.name, tenant.weight))
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
        sde_seconds = time.perf_counter() - started
        return await asyncio.to_thread(self._outcome, job, model, result, sde_seconds)

    @staticmethod
    def _trajectory(job: EditJob, model: LoadedModel) -> EditTrajectory:
        rngs = [GaussianNoise(seed) for seed in job.seeds]
        return EditTrajectory(model.schedule, job.guide, job.mask, job.params, rngs, job.levels)

    def _outcome(self, job: EditJob, model: LoadedModel, result: EditResult, sde_seconds: float) -> EditOutcome:
        encode_started = time.perf_counter()
        images = [self._encode(sample, job, seed) for sample, seed in zip(result.samples, job.seeds)]
        timings = StageTimings(sde_seconds=sde_seconds, network_seconds=result.network_seconds,
                               encode_seconds=time.perf_counter() - encode_started)
        return EditOutcome(images=images, network_calls=result.network_calls, model=model.info,
                           steps=job.params.steps, repeats=job.params.repeats,
                           sampler=job.params.sampler, spacing=job.params.spacing, timings=timings, request_id=job.request.request_id)

    @staticmethod
    def _encode(sample: np.ndarray, job: EditJob, seed: int) -> OutputImage:
        if job.output_format == "npy":
            return OutputImage(encode_npy(sample), NPY_MEDIA_TYPE, seed)
        pixels = composite_kept(job.pixels, to_pixels(sample), job.mask)
        return OutputImage(encode_png(pixels), PNG_MEDIA_TYPE, seed)

    async def aclose(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        with self._schedulers_lock:
            schedulers, self._schedulers = list(self._schedulers.values()), {}
        for scheduler in schedulers:
            scheduler.close()
        self.registry.close()
