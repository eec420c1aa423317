"""Sending the load: closed loop (N callers) or open loop (a target rate), over grpc.aio.

Closed loop: N callers each send a request, wait for its answer, send the next. Latency is
measured from the send.

Open loop: request i is due at a fixed time (i / rate, or Poisson arrivals), whatever
happened to the ones before. Its latency is measured from that *intended* time, not from
when it actually went out: when the client cannot keep up (the in-flight cap, a stalled
server), the time a request waited to be sent is part of its latency. Measuring from the
actual send instead is "coordinated omission": the client quietly slows down with the
server, and the server's queue disappears from the numbers. Each record keeps both.

Warm-up: requests due in the first `warmup` seconds run but are not measured.

Back-off: a call that fails with UNAVAILABLE (the server is gone, draining, or cannot be
connected to: gRPC fails such calls at once, so a client that just goes on sends tens of
thousands of calls a second at nothing) starts an exponential back-off with jitter: each
closed-loop caller waits before its next call; the open loop's schedule sends nothing
until its back-off ends, and each request due meanwhile is recorded as an UNAVAILABLE
error that was not sent (its intended time kept, so the schedule neither shifts nor
bursts when the back-off ends). Any other answer resets the back-off.

The measured window starts at the end of warm-up and lasts `duration` seconds (or, given a
request count, until the last measured request is sent). Latency statistics cover the
requests sent in the window; throughput counts the answers received in it, whenever their
request was sent, so neither warm-up nor the drain after the window (fewer callers, a
shrinking queue) skews the rate.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.client.connection import Connection
from service.loadtest.workload import RequestSpec, Workload


class NoResult(Exception):
    """A stream ended with status OK but no result event."""


TIMING_FIELDS = ("queue_seconds", "decode_seconds", "sde_seconds", "network_seconds", "encode_seconds", "total_seconds")


@dataclass(frozen=True)
class LoadPlan:
    address: str
    concurrency: int = 1  # closed loop: callers; open loop: cap on requests in flight (0 = none)
    rate: float = 0.0  # requests per second; > 0 selects the open loop
    arrivals: str = "uniform"  # open loop: "uniform" (every 1/rate s) or "poisson"
    duration: float = 10.0  # measured seconds, when requests == 0
    requests: int = 0  # measured requests (> 0 wins over duration)
    warmup: float = 0.0  # seconds
    rpc: str = "edit"  # "edit" | "stream"
    timeout: float = 600.0  # per-request deadline, seconds
    seed: int = 0  # of the arrival times, the request mix and the back-off jitter
    backoff_initial: float = 0.05  # seconds: the first back-off after an UNAVAILABLE
    backoff_max: float = 2.0  # seconds: back-offs double up to this

    @property
    def mode(self) -> str:
        return "open" if self.rate > 0 else "closed"


@dataclass
class Record:
    """One request, times in seconds from the end of warm-up (negative during warm-up)."""

    index: int
    intended: float  # when it was due: the send time in a closed loop
    sent: float
    done: float
    size: str
    seed_kind: str
    warmup: bool
    code: str = "OK"  # grpc.StatusCode name
    message: str = ""
    images: int = 0
    network_calls: int = 0  # per sample, as the response reports
    cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    called: bool = True  # False: due during a back-off, recorded as an error and not sent

    @property
    def latency(self) -> float:
        return self.done - self.intended

    @property
    def service_time(self) -> float:
        return self.done - self.sent


@dataclass
class RunResult:
    records: list[Record]
    window_seconds: float  # length of the measured window (see the module's docstring)
    started_at: float  # unix time of the end of warm-up


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.name
NOT_SENT = "not sent: the client was backing off after UNAVAILABLE"


class Backoff:
    """Exponential back-off with jitter: the n-th UNAVAILABLE in a row pauses for
    min(maximum, initial * 2^n) seconds times a uniform factor in [0.5, 1) (the jitter
    keeps callers that failed together from retrying together)."""

    def __init__(self, initial: float, maximum: float, rng: np.random.Generator):
        self.initial, self.maximum, self.rng = initial, maximum, rng
        self.failures = 0
        self.until = -math.inf  # back off until then (the runner's clock)

    def failed(self, now: float) -> float:
        """Counts an UNAVAILABLE answered at `now`; returns the pause it starts."""
        pause = min(self.maximum, self.initial * 2 ** self.failures) * self.rng.uniform(0.5, 1.0)
        self.failures += 1
        self.until = max(self.until, now + pause)
        return pause

    def succeeded(self) -> None:
        self.failures = 0
        self.until = -math.inf

    def paused(self, now: float) -> bool:
        return now < self.until


class Runner:
    def __init__(self, plan: LoadPlan, workload: Workload, stub: sdedit_pb2_grpc.ImageEditorStub,
                 on_measure_start: Callable[[], object] | None = None):
        self.plan = plan
        self.workload = workload
        self.stub = stub
        self.on_measure_start = on_measure_start
        self.records: list[Record] = []
        self._index = itertools.count()
        self._tickets = plan.requests  # measured requests left to send (request-count mode)

    async def run(self) -> RunResult:
        if self.plan.warmup <= 0 and self.on_measure_start is not None:
            await asyncio.to_thread(self.on_measure_start)  # before the first measured request
        self._zero = asyncio.get_running_loop().time() + self.plan.warmup  # times count from the end of warm-up
        self._end = None if self.plan.requests else self.plan.duration
        started_at = time.time() + self.plan.warmup
        marker = asyncio.create_task(self._mark_measure_start()) if self.plan.warmup > 0 else None
        try:
            if self.plan.mode == "closed":
                await asyncio.gather(*(self._caller(self._backoff(k)) for k in range(self.plan.concurrency)))
            else:
                await self._open_loop()
        finally:
            if marker is not None:
                await marker  # the hook has run (measured requests come after warm-up) or runs now
        return RunResult(sorted(self.records, key=lambda r: r.index), self._window(), started_at)

    def _window(self) -> float:
        if self._end is not None:
            return self._end
        measured = [r for r in self.records if not r.warmup]
        last_sent = max((r.sent for r in measured), default=0.0)
        return last_sent if last_sent > 0 else max((r.done for r in measured), default=0.0)

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self._zero

    async def _mark_measure_start(self) -> None:
        await asyncio.sleep(max(0.0, -self._now()))  # until the end of warm-up
        if self.on_measure_start is not None:
            await asyncio.to_thread(self.on_measure_start)

    def _may_send(self, due: float) -> bool:
        """Whether a request due at `due` belongs to the run; takes its ticket if measured."""
        if due < 0:
            return True  # warm-up
        if self._end is not None:
            return due < self._end
        if self._tickets <= 0:
            return False
        self._tickets -= 1
        return True

    def _backoff(self, worker: int) -> Backoff:
        rng = np.random.default_rng([self.plan.seed, 2, worker])  # its own jitter per caller
        return Backoff(self.plan.backoff_initial, self.plan.backoff_max, rng)

    async def _caller(self, backoff: Backoff) -> None:
        while self._may_send(due := self._now()):
            await self._send(self.workload.next(), due, backoff)
            if backoff.paused(now := self._now()):
                left = math.inf if self._end is None else max(0.0, self._end - now)  # never past the window
                await asyncio.sleep(min(backoff.until - now, left))

    async def _open_loop(self) -> None:
        limit = asyncio.Semaphore(self.plan.concurrency) if self.plan.concurrency > 0 else None
        rng = np.random.default_rng(self.plan.seed + 1)
        backoff = self._backoff(0)  # one for the schedule
        tasks: set[asyncio.Task] = set()
        due = -self.plan.warmup
        while self._may_send(due):
            await asyncio.sleep(max(0.0, due - self._now()))
            spec = self.workload.next()
            if limit is not None:
                await limit.acquire()  # waiting here is part of the request's latency
            if backoff.paused(self._now()):  # due while backing off: an error, and the schedule goes on
                if limit is not None:
                    limit.release()
                self._not_sent(spec, due)
            else:
                task = asyncio.create_task(self._send(spec, due, backoff))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if limit is not None:
                    task.add_done_callback(lambda _: limit.release())
            due += self._gap(rng)
        if tasks:
            await asyncio.gather(*tasks)

    def _gap(self, rng: np.random.Generator) -> float:
        return rng.exponential(1 / self.plan.rate) if self.plan.arrivals == "poisson" else 1 / self.plan.rate

    def _not_sent(self, spec: RequestSpec, due: float) -> None:
        now = self._now()
        self.records.append(Record(next(self._index), due, now, now, spec.size, spec.seed_kind, due < 0,
                                   code=UNAVAILABLE, message=NOT_SENT, called=False))

    async def _send(self, spec: RequestSpec, due: float, backoff: Backoff) -> None:
        record = Record(next(self._index), due, self._now(), 0.0, spec.size, spec.seed_kind, due < 0)
        try:
            response = await self._call(spec.request)
            record.images = len(response.images)
            record.network_calls = response.network_calls
            record.cached = response.cached
            record.timings = {name: getattr(response.timings, name) for name in TIMING_FIELDS}
        except grpc.aio.AioRpcError as exc:
            record.code, record.message = exc.code().name, exc.details() or ""
        except NoResult as exc:
            record.code, record.message = grpc.StatusCode.UNKNOWN.name, str(exc)
        record.done = self._now()
        if record.code == UNAVAILABLE:
            backoff.failed(record.done)
        else:
            backoff.succeeded()
        self.records.append(record)

    async def _call(self, request: pb.EditRequest) -> pb.EditResponse:
        if self.plan.rpc == "edit":
            return await self.stub.Edit(request, timeout=self.plan.timeout)
        result = None
        async for event in self.stub.StreamEdit(request, timeout=self.plan.timeout):
            if event.WhichOneof("event") == "result":
                result = event.result
        if result is None:
            raise NoResult("StreamEdit ended without a result")
        return result


def open_channel(address: str | Connection) -> grpc.aio.Channel:
    """address: HOST:PORT (plaintext, no token) or a Connection (TLS, mutual TLS, token)."""
    return (address if isinstance(address, Connection) else Connection(address)).aio_channel()
