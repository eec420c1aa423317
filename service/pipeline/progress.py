"""Progress of a running edit as a stream reader gets it: each step's update (with preview
images on preview steps), handed on in order by a ProgressRelay that encodes the previews off
the batch scheduler's thread, and the bounded backlog a slow StreamEdit reader is served from."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, Future

import numpy as np

from service.pipeline.imaging import encode_png, to_pixels
from service.requests import EditOutcome, ProgressUpdate
from service.sde import Progress, StepEvent

ProgressCallback = Callable[[ProgressUpdate], None]
STREAM_BACKLOG = 64  # progress events kept for a slow StreamEdit reader; older ones are dropped
STREAM_PREVIEW_BYTES = 16 << 20  # preview images kept in it; past this, older previews lose their images


def encode_previews(samples: np.ndarray) -> tuple[bytes, ...]:
    """Each sample's predicted image [B, C, H, W] (model range) as PNG."""
    return tuple(encode_png(to_pixels(np.clip(x, -1, 1))) for x in samples)


class ProgressRelay:
    """Hands an edit's step events to on_progress in step order, its preview images encoded on
    `encoders` (threads of the edit service), never on the batch scheduler's thread: one edit's
    previews must not delay the edits sharing its calls. step() runs on the scheduler's thread
    and returns the encoding it handed out (the scheduler holds the edit back while too many
    are outstanding, service/batching/state.py); updates without previews pass at once unless
    one with previews is still ahead of them. Each update is a step event as a reader gets it:
    its progress with the time from `started` (time.perf_counter()) to the step, and on a
    preview step each sample's predicted image as PNG."""

    def __init__(self, on_progress: ProgressCallback, started: float, encoders: Executor):
        self._on_progress, self._started, self._encoders = on_progress, started, encoders
        self._queue: collections.deque[tuple[Future, Progress]] = collections.deque()
        self._lock = threading.Lock()
        self._drained: list[Future] = []
        self._error: BaseException | None = None

    def step(self, event: StepEvent) -> Future | None:
        progress = dataclasses.replace(event.progress, elapsed_seconds=time.perf_counter() - self._started)
        if event.pred_original_sample is None:
            with self._lock:
                if not self._queue:
                    self._on_progress(ProgressUpdate(progress, ()))
                    return None
                done: Future = Future()
                done.set_result(())
                self._queue.append((done, progress))
            return None
        encoding = self._encoders.submit(encode_previews, event.pred_original_sample)
        with self._lock:
            self._queue.append((encoding, progress))
        encoding.add_done_callback(lambda _: self._flush())
        return encoding

    def _flush(self) -> None:
        """Hands on every update whose previews are ready, in order (on an encoder's thread)."""
        with self._lock:
            while self._queue and self._queue[0][0].done():
                encoding, progress = self._queue.popleft()
                if encoding.exception() is not None:
                    self._error = self._error or encoding.exception()
                elif self._error is None:
                    try:
                        self._on_progress(ProgressUpdate(progress, encoding.result()))
                    except Exception as exc:  # noqa: BLE001 - the edit fails with it (drained), as on its own thread
                        self._error = exc
            if not self._queue:
                waiting, self._drained = self._drained, []
                for future in waiting:
                    _settle(future, self._error)

    def drained(self) -> Future:
        """Done once every update so far is handed on (its error: a preview that failed)."""
        future: Future = Future()
        with self._lock:
            if self._queue:
                self._drained.append(future)
                return future
        _settle(future, self._error)
        return future


def _settle(future: Future, error: BaseException | None) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(None)


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
def _retrieved(task: asyncio.Task) -> None:
    """Marks the task's exception as retrieved (whoever awaits it still gets it): one its
    consumer left behind is not logged "Task exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


async def with_progress(edit: Callable[[ProgressCallback], Awaitable[EditOutcome]], on_drop: Callable[[], None] | None = None
                        ) -> AsyncIterator[ProgressUpdate | EditOutcome]:
    """Runs edit(on_progress) and yields its progress updates (called from any thread), then
    its outcome. Closing the iterator cancels the edit."""
    loop = asyncio.get_running_loop()
    updates = ProgressBacklog(on_drop=on_drop)

    def on_progress(update: ProgressUpdate) -> None:
        loop.call_soon_threadsafe(updates.put, update)

    task = asyncio.create_task(edit(on_progress))
    task.add_done_callback(_retrieved)  # a consumer that leaves after the edit failed never reads its error
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
