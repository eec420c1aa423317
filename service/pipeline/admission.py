"""Admission control: a fixed number of edits run at once, a bounded number wait, and every
admitted edit's memory estimate (service/pipeline/costs.py) is held against one budget: what
`--memory-budget-mib` leaves once the process and its models are in (edit_budget_bytes).

A request is admitted *before* its images are decoded (`reserve`, with the bytes its
message and decoded inputs will hold): when those bytes do not fit what the requests already
admitted hold, it is refused at once (RESOURCE_EXHAUSTED) rather than decoded and piled up.
A cache hit then releases its ticket without ever taking a slot or a queue place; a miss
queues (`Ticket.run`; refused when every slot is busy and the queue is full) until a slot
is free and its running bytes fit, first come first served, so a large edit is never
overtaken for ever by small ones.
Once draining starts (SIGTERM), new requests are refused (UNAVAILABLE) while the admitted
ones, running or waiting, finish.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.config import Settings, SettingsError
from service.errors import ResourceExhausted, Unavailable

MIB = 1 << 20
HEADROOM_BYTES = 128 << 20  # gRPC buffers, the cache's working copies, the interpreter's own growth


class Admission:
    def __init__(self, slots: int, max_queue: int, budget_bytes: int | None = None):
        self.slots = slots
        self.max_queue = max_queue
        self.budget_bytes = budget_bytes  # None: no memory budget (tests of the queue alone)
        self.preparing = 0  # admitted, decoding or looking up the cache
        self.waiting = 0  # queued for a slot
        self.running = 0
        self.used_bytes = 0  # held by every ticket, plus running bytes of running edits
        self.draining = False
        self._queue: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self.preparing + self.waiting + self.running

    def check_open(self) -> None:
        if self.draining:
            raise Unavailable("the service is shutting down; retry on another replica")

    def fits(self, total_bytes: int) -> bool:
        """Whether a request of this many bytes could ever run (with nothing else admitted)."""
        return self.budget_bytes is None or total_bytes <= self.budget_bytes

    def _fits_now(self, nbytes: int) -> bool:
        return self.budget_bytes is None or self.used_bytes + nbytes <= self.budget_bytes

    def reserve(self, held_bytes: int = 0) -> Ticket:
        """Admits a request that holds `held_bytes` until its ticket is released."""
        self.check_open()
        if not self._fits_now(held_bytes):
            raise ResourceExhausted(
                f"the edits admitted now hold {self.used_bytes / MIB:.0f} MiB of the {self.budget_bytes / MIB:.0f} MiB "
                f"memory budget; this request needs {held_bytes / MIB:.0f} MiB more to wait; retry later"
            )
        self.preparing += 1
        self.used_bytes += held_bytes
        self._idle.clear()
        return Ticket(self, held_bytes)

    @asynccontextmanager
    async def slot(self, running_bytes: int = 0) -> AsyncIterator[float]:
        """reserve() and Ticket.run() in one: holds a slot for the body, yields the wait."""
        ticket = self.reserve()
        try:
            async with ticket.run(running_bytes) as queue_seconds:
                yield queue_seconds
        finally:
            ticket.release()

    def _grant(self) -> None:
        """Starts queued edits in order while a slot is free and the head's bytes fit."""
        while self._queue and self.running < self.slots:
            future, nbytes = self._queue[0]
            if future.done():  # cancelled while queued
                self._queue.popleft()
                continue
            if not self._fits_now(nbytes):
                return  # first come first served: the head waits for memory, the rest behind it
            self._queue.popleft()
            self.running += 1
            self.waiting -= 1
            self.used_bytes += nbytes
            future.set_result(None)

    def _finished(self, running_bytes: int) -> None:
        self.running -= 1
        self.used_bytes -= running_bytes
        self._grant()

    def _released(self, held_bytes: int) -> None:
        self.used_bytes -= held_bytes
        self._grant()
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


class Ticket:
    """One admitted request: queued and run at most once, released exactly once (in a finally)."""

    def __init__(self, admission: Admission, held_bytes: int):
        self._admission = admission
        self._held = held_bytes
        self._state = "admitted"  # -> running -> ran -> done, or admitted -> done

    @asynccontextmanager
    async def run(self, running_bytes: int = 0) -> AsyncIterator[float]:
        """Waits for a slot and for `running_bytes` of the budget; yields the seconds waited."""
        admission = self._admission
        if self._state != "admitted":
            raise RuntimeError(f"a ticket runs once, this one is {self._state}")
        if admission.running >= admission.slots and admission.waiting >= admission.max_queue:
            raise ResourceExhausted(f"all {admission.slots} edit slots are busy and {admission.waiting} edits are queued "
                                    f"(max_queue {admission.max_queue}); retry later")
        admission.preparing -= 1
        admission.waiting += 1
        queued_at = time.perf_counter()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        admission._queue.append((future, running_bytes))
        admission._grant()
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():  # granted just as the caller left
                self._stop_running(running_bytes)
            else:
                admission.waiting -= 1
                admission.preparing += 1  # back to admitted-not-running until release
            raise
        self._state = "running"
        try:
            yield time.perf_counter() - queued_at
        finally:
            self._stop_running(running_bytes)

    def _stop_running(self, running_bytes: int) -> None:
        self._admission.preparing += 1  # admitted-not-running until release (one place counts down)
        self._state = "ran"
        self._admission._finished(running_bytes)

    def release(self) -> None:
        if self._state == "done":
            return
        self._state = "done"
        self._admission.preparing -= 1
        self._admission._released(self._held)


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
