"""Admission control: a fixed number of edits run at once, a bounded number wait.

A request that finds every slot busy and the queue full is refused at once
(RESOURCE_EXHAUSTED) rather than piling up; once draining starts (SIGTERM), new requests
are refused (UNAVAILABLE) while the admitted ones, running or waiting, finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.errors import ResourceExhausted, Unavailable


class Admission:
    def __init__(self, slots: int, max_queue: int):
        self.slots = slots
        self.max_queue = max_queue
        self._free = asyncio.Semaphore(slots)
        self.waiting = 0
        self.running = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self.waiting + self.running

    def check_open(self) -> None:
        if self.draining:
            raise Unavailable("the service is shutting down; retry on another replica")

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Holds a slot for the body; yields the seconds spent waiting for it."""
        self.check_open()
        if self._free.locked() and self.waiting >= self.max_queue:
            raise ResourceExhausted(
                f"all {self.slots} edit slots are busy and {self.waiting} edits are queued (max_queue {self.max_queue}); retry later"
            )
        queued_at = time.perf_counter()
        self.waiting += 1
        self._idle.clear()
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield time.perf_counter() - queued_at
        finally:
            self.running -= 1
            self._free.release()
            if self.in_flight == 0:
                self._idle.set()

    def start_draining(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until nothing is admitted; False if the timeout came first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
