"""The edit service: validate, look up the cache, admit, run the SDEdit loop off the
event loop, encode, store.

Transport-free: gRPC handlers call `edit` or `stream` with plain requests. A cache hit
(or a duplicate of an edit in flight) never takes an admission slot. The loop runs in a
worker thread and checks, before every network call, whether the caller cancelled or the
deadline passed; then it stops within one step and its admission slot is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.admission import Admission
from service.cache import RequestKey, ResultCache, request_key
from service.config import Settings
from service.errors import Cancelled, DeadlineExceeded
from service.imaging import NPY_MEDIA_TYPE, PNG_MEDIA_TYPE, composite_kept, encode_npy, encode_png, to_pixels
from service.metrics import Metrics
from service.models import LoadedModel, ModelRegistry
from service.requests import EditJob, EditOutcome, EditRequestData, OutputImage, ProgressUpdate, StageTimings
from service.sdedit import EditCancelled, StepEvent, run_sdedit
from service.validation import prepare_job

log = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressUpdate], None]


class EditService:
    def __init__(self, settings: Settings, registry: ModelRegistry, cache: ResultCache | None = None,
                 metrics: Metrics | None = None):
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.admission = Admission(settings.max_concurrent_edits, settings.max_queue)
        self.metrics = metrics or Metrics()
        self.metrics.watch_admission(self.admission)
        self.metrics.describe_models((m.info for m in registry.all()), registry.default)
        if cache is not None:
            self.metrics.watch_cache(cache.stats)
        self._executor = ThreadPoolExecutor(max_workers=settings.max_concurrent_edits, thread_name_prefix="sdedit-loop")

    async def edit(
        self,
        req: EditRequestData,
        deadline: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> EditOutcome:
        """Runs one edit. deadline: time.monotonic() value, or None.

        on_progress is called from the worker thread after every step.
        """
        received = time.perf_counter()
        self.admission.check_open()
        model = self.registry.get(req.model)
        job, key = await asyncio.to_thread(self._prepare, req, model)
        self.metrics.decoded(model.info.name, job.decode_seconds)

        async def run() -> EditOutcome:
            async with self.admission.slot() as queue_seconds:
                self.metrics.admitted(queue_seconds)
                outcome = await self._run_in_worker(job, model, deadline, on_progress)
            outcome.timings.queue_seconds = queue_seconds
            return outcome

        if self.cache is None or key is None:
            outcome = await run()
        else:
            outcome = await self.cache.run(key, model.info, run, deadline)
        outcome.timings.decode_seconds = job.decode_seconds
        outcome.timings.total_seconds = time.perf_counter() - received
        self.metrics.edit_finished(outcome)
        return outcome

    def _prepare(self, req: EditRequestData, model: LoadedModel) -> tuple[EditJob, RequestKey | None]:
        """Validation, decoding and the cache key: CPU work, run off the event loop."""
        job = prepare_job(req, model, self.settings)
        return job, None if self.cache is None else request_key(job, model.info)

    async def stream(self, req: EditRequestData, deadline: float | None = None) -> AsyncIterator[ProgressUpdate | EditOutcome]:
        """Yields progress updates, then the outcome. Closing the iterator cancels the edit."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[ProgressUpdate] = asyncio.Queue()

        def on_progress(update: ProgressUpdate) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, update)

        task = asyncio.create_task(self.edit(req, deadline, on_progress))
        getter: asyncio.Task | None = None
        try:
            while True:
                getter = asyncio.create_task(updates.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not updates.empty():
                    yield updates.get_nowait()
                yield task.result()  # raises the edit's error, if any
                return
        finally:
            if getter is not None:
                getter.cancel()  # the consumer may leave while it waits (a client cancel)
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _run_in_worker(self, job: EditJob, model: LoadedModel, deadline: float | None,
                             on_progress: ProgressCallback | None) -> EditOutcome:
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._run_loop, job, model, stop, deadline, on_progress)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()  # the loop notices before its next network call
            with contextlib.suppress(BaseException):
                await future  # hold the slot until the worker has really stopped
            raise

    def _run_loop(self, job: EditJob, model: LoadedModel, stop: threading.Event, deadline: float | None,
                  on_progress: ProgressCallback | None) -> EditOutcome:
        started = time.perf_counter()
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
            on_progress(ProgressUpdate(event.repeat, event.repeats, event.step, event.steps, event.network_calls,
                                       event.total_network_calls, time.perf_counter() - started, previews))

        rngs = [np.random.default_rng(seed) for seed in job.seeds]
        log.debug("running the SDEdit loop: model %s, %d sample(s), %d repeat(s) x %d steps", job.model_name,
                  len(job.seeds), job.params.repeats, job.params.steps)
        try:
            eps_fn = self.metrics.timed_network(  # the deadline bounds remote calls too
                model.info.name, functools.partial(model.backend.predict_eps, deadline=deadline))
            result = run_sdedit(eps_fn, model.schedule, job.guide, job.mask, job.params, rngs,
                                on_step=on_step, should_stop=should_stop)
        except EditCancelled as exc:
            if timed_out:
                raise DeadlineExceeded(f"deadline exceeded: {exc}") from exc
            raise Cancelled(f"cancelled: {exc}") from exc
        sde_seconds = time.perf_counter() - started
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
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.registry.close()
