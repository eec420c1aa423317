"""Launches and lands the scheduler's network calls: one call on the concatenation of the
chosen edits' samples (each sample with its own timestep), the next step's noise drawn while
it runs, then every edit's step on its slice of the answer.

pipeline_depth 1: the call is made on the scheduler's thread when it lands (no thread hop);
2: calls are sent on threads of their own, so the second call is sent (its input crossing to
the device) while the first runs. A sample's output depends on its own request and seed only:
the math runs per edit on its own slice, its noise comes from its own generators; only the
network sees the batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.batching.state import ActiveEdit

# The network: predict_eps(x, t, deadline) of a backend (service/backends/base.py ScoreModel),
# deadline the earliest of the call's edits (time.monotonic(), or None).
EpsFn = Callable[[np.ndarray, np.ndarray, float | None], np.ndarray]
TimedEps = tuple[np.ndarray, float, float]  # (eps, started, ended) in perf_counter seconds
Outcome = tuple[ActiveEdit, BaseException | None]  # an edit and the error of its step, if any


class PendingCall(Protocol):
    def result(self) -> TimedEps: ...


class DeferredCall:
    """Depth 1: a call not yet made; result() makes it, on the thread that lands it."""

    def __init__(self, eps_fn: EpsFn, x: np.ndarray, t: np.ndarray, deadline: float | None):
        self._eps_fn, self._x, self._t, self._deadline = eps_fn, x, t, deadline

    def result(self) -> TimedEps:
        return timed_call(self._eps_fn, self._x, self._t, self._deadline)


@dataclass(eq=False)
class Flight:
    """One network call in flight: its edits, the call, the noise being drawn for their step."""

    batch: list[ActiveEdit]
    images: int
    call: PendingCall  # a Future from the calls' threads (depth 2) or a DeferredCall (depth 1)
    drawing: list[Future]
    launch_cpu_seconds: float
    launch_seconds: float


@dataclass(eq=False)
class Landing:
    """A landed call, for the scheduler's update: the device's time for it (None: the call
    failed), the error that fails every edit of it (the call's or a draw's), else each edit's
    outcome, and the marks from which the scheduler's thread's own work is measured."""

    flight: Flight
    network_seconds: float | None
    error: BaseException | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    noise_wait_seconds: float = 0.0  # waiting, after the call, for noise still being drawn
    share_cpu_seconds: float = 0.0  # the other threads' CPU seconds in the steps
    wall_started: float = 0.0  # perf_counter when the call had landed
    cpu_started: float = 0.0  # thread_time when the steps began


class Executor:
    def __init__(self, name: str, eps_fn: EpsFn, pipeline_depth: int, noise_threads: int):
        self.eps_fn = eps_fn
        self.pipeline_depth = pipeline_depth
        self._last_call_end = 0.0
        self._network = (ThreadPoolExecutor(pipeline_depth, thread_name_prefix=f"sdedit-call-{name}")
                         if pipeline_depth > 1 else None)
        # Next steps' noise is drawn on these threads while the network call runs (numpy's
        # generators release the GIL), each sample from its own generator in its own order.
        self._noise = ThreadPoolExecutor(noise_threads, thread_name_prefix=f"sdedit-noise-{name}") if noise_threads else None
        # The steps' shares: the scheduler's thread and as many others, at most one per core in
        # all. Their own threads, not the noise threads: a landed call's steps are the critical
        # path (its group's next call waits for them), so they must not queue behind noise drawn
        # for the other group's step, which is needed only when that call lands.
        self._workers = min(noise_threads + 1, os.cpu_count() or 1) if noise_threads else 1
        self._shares = (ThreadPoolExecutor(self._workers - 1, thread_name_prefix=f"sdedit-steps-{name}")
                        if self._workers > 1 else None)

    def close(self) -> None:
        for pool in (self._network, self._noise, self._shares):
            if pool is not None:
                pool.shutdown(wait=True)

    def launch(self, batch: list[ActiveEdit]) -> Flight:
        """Builds the call's input, starts drawing the step's noise, and sends the call (depth 2)
        or keeps it to make when it lands (depth 1)."""
        wall, cpu = time.perf_counter(), time.thread_time()
        inputs = [edit.trajectory.network_input() for edit in batch]
        x = inputs[0][0] if len(inputs) == 1 else np.concatenate([i[0] for i in inputs])
        t = inputs[0][1] if len(inputs) == 1 else np.concatenate([i[1] for i in inputs])
        drawing = self._draw_noise(batch)
        deadline = call_deadline(batch)
        call: PendingCall
        if self._network is None:
            call = DeferredCall(self.eps_fn, x, t, deadline)
        else:
            call = self._network.submit(timed_call, self.eps_fn, x, t, deadline)
        return Flight(batch, len(x), call, drawing, time.thread_time() - cpu, time.perf_counter() - wall)

    def land(self, flight: Flight) -> Landing:
        """Waits for the call (depth 1: makes it), then every edit of it takes its step."""
        try:
            eps, started, ended = flight.call.result()
        except Exception as exc:  # noqa: BLE001 - the backend failed: every edit of this call fails with it
            _wait_all(flight.drawing)
            return Landing(flight, None, exc)
        # The device's time for this call: from its start, or from the end of the call before it
        # when it was queued behind that one (the calls of one accelerator run one at a time).
        # (Two calls may also run at once, as on a Triton with two instances, and end in either
        # order: then the later of them counts only its time after the other's end.)
        network_seconds = max(0.0, ended - max(started, self._last_call_end))
        self._last_call_end = max(self._last_call_end, ended)
        wall = time.perf_counter()
        try:
            _wait_all(flight.drawing)
        except Exception as exc:  # noqa: BLE001 - a draw failed: its edits' noise is not there
            return Landing(flight, network_seconds, exc, wall_started=wall)
        noise_wait_seconds = time.perf_counter() - wall
        cpu_started = time.thread_time()
        for edit in flight.batch:
            edit.network_seconds += network_seconds
        outcomes, share_cpu = self._advance_all(flight.batch, np.asarray(eps, dtype=np.float32))
        return Landing(flight, network_seconds, None, outcomes, noise_wait_seconds, share_cpu, wall, cpu_started)

    def _advance_all(self, batch: list[ActiveEdit], eps: np.ndarray) -> tuple[list[Outcome], float]:
        """Every edit's step on its slice of eps, and the CPU seconds of the other threads that
        took part. With more than one edit, the edits are split into contiguous shares of about
        equal images, one per core (numpy's arithmetic releases the GIL, so the shares run in
        parallel); each edit's step is the same wherever it runs."""
        offsets = np.cumsum([0] + [edit.trajectory.batch for edit in batch])
        jobs = [(edit, eps[offsets[i]:offsets[i + 1]]) for i, edit in enumerate(batch)]
        if self._shares is None or len(jobs) < 2:
            return [_advance(edit, part) for edit, part in jobs], 0.0
        shares = _split_by_images(jobs, self._workers)
        futures = [self._shares.submit(_advance_share, share) for share in shares[1:]]
        outcomes = [_advance(edit, part) for edit, part in shares[0]]  # this thread takes a share too
        cpu = 0.0
        for future in futures:
            share_outcomes, share_cpu = future.result()
            outcomes.extend(share_outcomes)
            cpu += share_cpu
        return outcomes, cpu

    def _draw_noise(self, batch: list[ActiveEdit]) -> list[Future]:
        tasks = [task for edit in batch for task in edit.trajectory.noise_tasks()]
        if self._noise is None:
            for task in tasks:
                task()
            return []
        return [self._noise.submit(task) for task in tasks]


def call_deadline(batch: list[ActiveEdit]) -> float | None:
    """The deadline of a call: the earliest of its edits' (None: none of them has one)."""
    return min((edit.deadline for edit in batch if edit.deadline is not None), default=None)


def timed_call(eps_fn: EpsFn, x: np.ndarray, t: np.ndarray, deadline: float | None) -> TimedEps:
    started = time.perf_counter()
    eps = eps_fn(x, t, deadline)
    return eps, started, time.perf_counter()


def _advance(edit: ActiveEdit, eps: np.ndarray) -> Outcome:
    """One edit's step and its progress callback (which may hand work out of the step: the
    edit is held out of calls while that lags, state.py); an error fails that edit only."""
    try:
        event = edit.trajectory.advance(eps)
        if edit.on_step is not None:
            work = edit.on_step(event)
            if isinstance(work, Future):
                edit.hand_out(work)
    except Exception as exc:  # noqa: BLE001 - the edit fails with it; the others go on
        return edit, exc
    return edit, None


def _advance_share(share: list) -> tuple[list[Outcome], float]:
    started = time.thread_time()
    outcomes = [_advance(edit, part) for edit, part in share]
    return outcomes, time.thread_time() - started


def _split_by_images(jobs: list, shares: int) -> list[list]:
    """Contiguous shares of about equal images (whole edits), at most `shares` of them."""
    total = sum(len(part) for _, part in jobs)
    out: list[list] = [[]]
    filled = 0
    for job in jobs:
        if out[-1] and filled >= total * len(out) / shares and len(out) < shares:
            out.append([])
        out[-1].append(job)
        filled += len(job[1])
    return out


def _wait_all(futures: list[Future]) -> None:
    """Waits for every draw (even after one failed), then raises the first failure."""
    errors = [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
