"""Progress of a running edit as a stream reader gets it: each step's update (with preview
images on preview steps), and the bounded backlog a slow StreamEdit reader is served from."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

from service.pipeline.imaging import encode_png, to_pixels
from service.requests import EditOutcome, ProgressUpdate
from service.sde import StepEvent

ProgressCallback = Callable[[ProgressUpdate], None]
STREAM_BACKLOG = 64  # progress events kept for a slow StreamEdit reader; older ones are dropped
STREAM_PREVIEW_BYTES = 16 << 20  # preview images kept in it; past this, older previews lose their images


def progress_update(event: StepEvent, started: float) -> ProgressUpdate:
    """A step event of the engine as a reader gets it: the time since `started`
    (time.perf_counter()) and, on a preview step, each sample's predicted image as PNG."""
    previews: tuple[bytes, ...] = ()
    if event.pred_original_sample is not None:
        previews = tuple(encode_png(to_pixels(np.clip(x, -1, 1))) for x in event.pred_original_sample)
    return ProgressUpdate(dataclasses.replace(event.progress, elapsed_seconds=time.perf_counter() - started), previews)


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
