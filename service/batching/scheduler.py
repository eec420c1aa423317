"""Step-level batching: every running edit of one (model, channels, height, width) shares one
network call per step.

A BatchScheduler holds each admitted edit as an explicit state (an EditTrajectory from
service/sdedit/engine.py: its samples, levels, sampler history, generators, mask, repeat
counter) and runs ticks on its own thread: one network call on the concatenation of the
chosen edits' samples, each sample with its own timestep, then every chosen edit advances by
its own step. Edits join and leave between ticks (continuous batching); an edit always brings
all of its samples.

Policy, when the active edits' samples exceed `max_batch_images`: a fair share across tenants
by weight, then oldest first within one. Each tenant's images served are counted (divided by
its weight, across ticks); the call is filled edit by edit, each time from the tenant served
least so far that has an edit that fits, taking its oldest edit that fits (whole edits
only). A tenant that becomes active starts level with the least served of the active ones,
so it neither waits behind a heavy tenant's backlog nor gets a burst for its idle time. With
one tenant (no --auth-tokens-file) this is oldest first: whole edits in arrival order while
they fit; an edit that does not fit waits for the next tick and, being older than every later
arrival of its tenant, is never starved (each edit ahead of it finishes in a bounded number
of calls). Before every call, every edit's stop condition (cancelled,
deadline, shutdown) is checked: a stopped edit leaves before the next call and frees its place.

A sample's output depends on its own request and seed only: the math runs per edit on its own
slice, its noise comes from its own generators; only the network sees the batch.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.sdedit import EditCancelled, EditResult, EditTrajectory, StepEvent

log = logging.getLogger(__name__)
EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
IDLE_EXIT_SECONDS = 5.0  # a scheduler's thread ends after this long with nothing to run
SERIAL_EMA = 0.1  # weight of the latest tick in the moving average of serial seconds per image
PROBE_FRACTION = 0.1  # with one batch size known: split once if the serial work is this share of its call
HYSTERESIS = 0.75  # two groups go back to one when the serial work falls below this share of a call's fixed cost


@dataclass
class TickStats:
    """What one tick did, for metrics: images in the call, edits in it, seconds of each part."""

    images: int
    edits: int
    network_seconds: float
    cpu_seconds: float  # the tick's own work outside the network (its thread's CPU time)
    noise_wait_seconds: float = 0.0  # waiting, after the call, for noise still being drawn on other threads


@dataclass(eq=False)
class ActiveEdit:
    trajectory: EditTrajectory
    future: Future  # -> EditResult
    should_stop: Callable[[], bool]
    on_step: Callable[[StepEvent], None] | None
    order: int
    tenant: str = ""
    weight: float = 1.0
    network_seconds: float = 0.0
    started: bool = field(default=False)
    in_flight: bool = False  # in a call now: it takes its step when the call lands


@dataclass(eq=False)
class Flight:
    """One network call in flight: its edits, the call, the noise being drawn for their step."""

    batch: list[ActiveEdit]
    images: int
    call: Future  # -> (eps, started, ended)
    drawing: list[Future]
    launch_cpu_seconds: float
    launch_seconds: float


class CallCosts:
    """The network's cost per call as a + b * images, fitted (least squares) to the latest
    seconds seen at each batch size. `a`, the fixed cost of a call, is what splitting the
    active edits into two calls costs; until two batch sizes have been seen, the one call time
    known bounds it from above (a <= a + b * n), so the scheduler does not split on a guess."""

    def __init__(self, smoothing: float = 0.2):
        self.smoothing = smoothing
        self._seconds: dict[int, float] = {}  # batch size -> moving average of call seconds

    def add(self, images: int, seconds: float) -> None:
        old = self._seconds.get(images)
        self._seconds[images] = seconds if old is None else old + self.smoothing * (seconds - old)

    @property
    def sizes(self) -> int:
        """How many batch sizes have been seen."""
        return len(self._seconds)

    def fixed_seconds(self) -> float:
        if not self._seconds:
            return float("inf")
        if len(self._seconds) == 1:
            return next(iter(self._seconds.values()))
        n = np.array(list(self._seconds), dtype=np.float64)
        seconds = np.array(list(self._seconds.values()))
        _slope, intercept = np.polyfit(n, seconds, 1)
        return max(float(intercept), 0.0)


class BatchScheduler:
    def __init__(self, name: str, eps_fn: EpsFn, max_batch_images: int,
                 on_tick: Callable[[TickStats], None] | None = None, noise_threads: int = 2, pipeline_depth: int = 1):
        """pipeline_depth 2: up to two calls in flight (two groups of edits), when the fit of
        the network's costs says it pays (see _groups_now); 1: one call, then its steps."""
        if max_batch_images < 1:
            raise ValueError(f"max_batch_images must be >= 1, got {max_batch_images}")
        if pipeline_depth not in (1, 2):
            raise ValueError(f"pipeline_depth must be 1 or 2, got {pipeline_depth}")
        self.pipeline_depth = pipeline_depth
        self.costs = CallCosts()
        self._serial_per_image = 0.0  # moving average: this thread's seconds outside calls, per image
        self._split = False  # the last decision of _groups_now
        self._last_call_end = 0.0
        # depth 2: the calls' threads, so the second call is sent (its input crossing to the device)
        # while the first runs; depth 1 calls from the scheduler's thread
        self._network = ThreadPoolExecutor(pipeline_depth, thread_name_prefix=f"sdedit-call-{name}")
        self.name = name
        self.eps_fn = eps_fn
        self.max_batch_images = max_batch_images
        self._on_tick = on_tick
        self._edits: list[ActiveEdit] = []  # arrival order
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._order = itertools.count()
        self._served: dict[str, float] = {}  # images served / weight, per active tenant (fair share)
        # Next steps' noise is drawn on these threads while the network call runs (numpy's
        # generators release the GIL), each sample from its own generator in its own order.
        self._noise = ThreadPoolExecutor(noise_threads, thread_name_prefix=f"sdedit-noise-{name}") if noise_threads else None
        # The steps' shares: this thread and as many others, at most one per core in all. Their
        # own threads, not the noise threads: a landed call's steps are the critical path (its
        # group's next call waits for them), so they must not queue behind noise drawn for the
        # other group's step, which is needed only when that call lands.
        self._workers = min(noise_threads + 1, os.cpu_count() or 1) if noise_threads else 1
        self._shares = (ThreadPoolExecutor(self._workers - 1, thread_name_prefix=f"sdedit-steps-{name}")
                        if self._workers > 1 else None)

    @property
    def active(self) -> int:
        with self._wake:
            return len(self._edits)

    def submit(self, trajectory: EditTrajectory, should_stop: Callable[[], bool] | None = None,
               on_step: Callable[[StepEvent], None] | None = None, tenant: str = "", weight: float = 1.0) -> Future:
        """Adds an edit; its future resolves to its EditResult (or its error) when it leaves.
        tenant, weight: whose it is, and that tenant's share of a full call."""
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        if trajectory.batch > self.max_batch_images:
            raise ValueError(f"{trajectory.batch} samples exceed the batch of {self.max_batch_images} images")
        future: Future = Future()
        edit = ActiveEdit(trajectory, future, should_stop or (lambda: False), on_step, next(self._order), tenant, weight)
        with self._wake:
            if self._closed:
                raise RuntimeError(f"scheduler {self.name} is closed")
            self._edits.append(edit)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"sdedit-batch-{self.name}", daemon=True)
                self._thread.start()
            self._wake.notify()
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Stops the thread; edits still active fail with EditCancelled."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._network.shutdown(wait=True)
        for pool in (self._noise, self._shares):
            if pool is not None:
                pool.shutdown(wait=True)

    # --- the scheduler's thread -------------------------------------------------------

    def _run(self) -> None:
        flights: deque[Flight] = deque()  # calls in flight, oldest first
        while True:
            with self._wake:
                deadline = time.monotonic() + IDLE_EXIT_SECONDS
                while not flights and not self._edits and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._thread = None  # a later submit starts a new one
                        return
                    self._wake.wait(remaining)
                if self._closed and not flights:
                    edits, self._edits, self._thread = self._edits, [], None
                    for edit in edits:
                        _finish(edit, error=EditCancelled("the service is stopping"))
                    return
                launches = []
                if not self._closed:
                    self._drop_stopped()
                    while len(flights) + len(launches) < self._groups_now():
                        batch = self._choose()
                        if not batch:
                            break
                        for edit in batch:
                            edit.in_flight = True
                        launches.append(batch)
            for batch in launches:
                try:
                    flights.append(self._launch(batch))
                except Exception as exc:  # a bug in one call's set-up fails its edits, not the thread
                    log.exception("batch scheduler %s: a call could not be sent", self.name)
                    self._leave(batch, error=exc)
            if flights:
                flight = flights.popleft()
                try:
                    self._land(flight)
                except Exception as exc:  # likewise after the call
                    log.exception("batch scheduler %s: a call's steps failed", self.name)
                    self._leave(flight.batch, error=exc)

    def _groups_now(self) -> int:
        """Calls to have in flight: 1, or 2 (pipeline_depth 2) when the steps' serial work for
        the active images costs more than a second call's fixed cost (the CallCosts fit), so
        that one group's steps run while the other group's call does (lock held).

        While the fit knows one batch size only (edits that arrive together and stay in step),
        its bound on the fixed cost is that size's whole call; if the serial work is a tenth of
        that or more, one split is tried to learn a second size. Once split, the groups stay
        split until the serial work falls below 3/4 of the fixed cost (no flapping at the edge)."""
        if self.pipeline_depth < 2:
            return 1
        images = sum(edit.trajectory.batch for edit in self._edits)
        if images < 2:
            return 1
        serial = self._serial_per_image * images
        fixed = self.costs.fixed_seconds()
        if self.costs.sizes < 2:
            split = serial >= PROBE_FRACTION * fixed
        elif self._split:
            split = serial >= HYSTERESIS * fixed
        else:
            split = serial >= fixed
        self._split = split
        return 2 if split else 1

    def _drop_stopped(self) -> None:
        """Edits whose caller gave up leave before their next call (lock held)."""
        kept = []
        for edit in self._edits:
            if edit.in_flight:
                kept.append(edit)
                continue
            try:
                stop = edit.should_stop()
            except Exception as exc:  # noqa: BLE001 - a broken stop check must not take the others down
                _finish(edit, error=exc)
                continue
            if stop:
                _finish(edit, error=EditCancelled(f"stopped after {edit.trajectory.network_calls} network calls"))
            else:
                kept.append(edit)
        self._edits = kept

    def _choose(self) -> list[ActiveEdit]:
        """Whole edits (not in flight) for one call: a fair share across tenants by weight,
        oldest first within one (lock held). With two groups in flight, one call takes about
        half of the active images."""
        ready = [edit for edit in self._edits if not edit.in_flight]
        queues: dict[str, list[ActiveEdit]] = {}
        for edit in self._edits:  # arrival order: each tenant's edits oldest first
            queues.setdefault(edit.tenant, [])
            if not edit.in_flight:
                queues[edit.tenant].append(edit)
        served = self._served
        for gone in set(served) - set(queues):
            del served[gone]
        level = min(served.values(), default=0.0)
        for tenant in queues:
            served.setdefault(tenant, level)  # newly active: level with the least served
        room = self.max_batch_images
        if self._groups_now() > 1:
            room = min(room, -(-sum(edit.trajectory.batch for edit in self._edits) // 2))
        if sum(edit.trajectory.batch for edit in ready) <= room:
            chosen = ready  # everything fits: nobody waits
            for edit in chosen:
                served[edit.tenant] += edit.trajectory.batch / edit.weight
        else:
            chosen = self._fill({tenant: edits for tenant, edits in queues.items() if edits}, served, room)
            if not chosen and ready:  # an edit larger than half: it goes alone
                chosen = [ready[0]]
                served[ready[0].tenant] += ready[0].trajectory.batch / ready[0].weight
        low = min(served.values(), default=0.0)
        for tenant in served:  # keep the counts small: only their differences matter
            served[tenant] -= low
        return chosen

    def _fill(self, queues: dict[str, list[ActiveEdit]], served: dict[str, float], room: int) -> list[ActiveEdit]:
        """Fills one call edit by edit from the least served tenant that has an edit that fits
        (ties: the tenant with the oldest edit), taking that tenant's oldest edit that fits."""
        chosen = []
        candidates = {tenant: list(edits) for tenant, edits in queues.items()}
        while candidates:
            tenant = min(candidates, key=lambda name: (served[name], candidates[name][0].order))
            edit = next((e for e in candidates[tenant] if e.trajectory.batch <= room), None)
            if edit is None:
                del candidates[tenant]  # nothing of this tenant fits what is left of the call
                continue
            candidates[tenant].remove(edit)
            if not candidates[tenant]:
                del candidates[tenant]
            chosen.append(edit)
            room -= edit.trajectory.batch
            served[tenant] += edit.trajectory.batch / edit.weight
        chosen.sort(key=lambda e: e.order)
        return chosen

    def _launch(self, batch: list[ActiveEdit]) -> Flight:
        """Builds the call's input, starts drawing the step's noise, and sends the call."""
        wall, cpu = time.perf_counter(), time.thread_time()
        inputs = [edit.trajectory.network_input() for edit in batch]
        x = inputs[0][0] if len(inputs) == 1 else np.concatenate([i[0] for i in inputs])
        t = inputs[0][1] if len(inputs) == 1 else np.concatenate([i[1] for i in inputs])
        drawing = self._draw_noise(batch)
        if self.pipeline_depth == 1:  # one call at a time: made here when it lands, no thread hop
            call: Future = Future()
            call.set_result(None)
            call.inputs = (x, t)  # type: ignore[attr-defined]
        else:
            call = self._network.submit(_timed_call, self.eps_fn, x, t)
        return Flight(batch, len(x), call, drawing, time.thread_time() - cpu, time.perf_counter() - wall)

    def _land(self, flight: Flight) -> None:
        """Waits for the call, then every edit of it takes its step."""
        batch = flight.batch
        try:
            if flight.call.result() is None:  # depth 1: the call is made now
                eps, started, ended = _timed_call(self.eps_fn, *flight.call.inputs)  # type: ignore[attr-defined]
            else:
                eps, started, ended = flight.call.result()
        except Exception as exc:  # noqa: BLE001 - the backend failed: every edit of this call fails with it
            _wait_all(flight.drawing)
            self._leave(batch, error=exc)
            return
        # The device's time for this call: from its start, or from the end of the call before it
        # when it was queued behind that one (the calls of one accelerator run one at a time).
        # (Two calls may also run at once, as on a Triton with two instances, and end in either
        # order: then the later of them counts only its time after the other's end.)
        network_seconds = max(0.0, ended - max(started, self._last_call_end))
        self._last_call_end = max(self._last_call_end, ended)
        self.costs.add(flight.images, network_seconds)
        wall = time.perf_counter()
        try:
            _wait_all(flight.drawing)
        except Exception as exc:  # noqa: BLE001 - a draw failed: its edits' noise is not there
            self._leave(batch, error=exc)
            return
        noise_wait_seconds = time.perf_counter() - wall
        cpu_started = time.thread_time()
        for edit in batch:
            edit.network_seconds += network_seconds
        outcomes, share_cpu = self._advance_all(batch, np.asarray(eps, dtype=np.float32))
        done, failed = [], []
        for edit, exc in outcomes:
            if exc is not None:
                failed.append((edit, exc))
            elif edit.trajectory.done:
                done.append(edit)
        for edit in done:
            self._leave([edit], result=edit.trajectory.result(edit.network_seconds))
        for edit, exc in failed:
            self._leave([edit], error=exc)
        with self._wake:
            for edit in batch:
                edit.in_flight = False
        serial = flight.launch_seconds + time.perf_counter() - wall  # this thread's wall time outside the call
        self._serial_per_image += SERIAL_EMA * (serial / flight.images - self._serial_per_image)
        if self._on_tick is not None:
            try:
                self._on_tick(TickStats(images=flight.images, edits=len(batch), network_seconds=network_seconds,
                                        cpu_seconds=flight.launch_cpu_seconds + time.thread_time() - cpu_started + share_cpu,
                                        noise_wait_seconds=noise_wait_seconds))
            except Exception:  # a broken observer must not stop the scheduler
                log.exception("batch scheduler %s: the tick observer failed", self.name)

    def _advance_all(self, batch: list[ActiveEdit], eps: np.ndarray) -> tuple[list[tuple[ActiveEdit, BaseException | None]], float]:
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

    def _leave(self, edits: list[ActiveEdit], result: EditResult | None = None, error: BaseException | None = None) -> None:
        with self._wake:
            leaving = set(map(id, edits))
            self._edits = [e for e in self._edits if id(e) not in leaving]
        for edit in edits:
            _finish(edit, result, error)


def _timed_call(eps_fn: EpsFn, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, float, float]:
    started = time.perf_counter()
    eps = eps_fn(x, t)
    return eps, started, time.perf_counter()


def _advance(edit: ActiveEdit, eps: np.ndarray) -> tuple[ActiveEdit, BaseException | None]:
    """One edit's step and its progress callback; an error fails that edit only."""
    try:
        event = edit.trajectory.advance(eps)
        if edit.on_step is not None:
            edit.on_step(event)
    except Exception as exc:  # noqa: BLE001 - the edit fails with it; the others go on
        return edit, exc
    return edit, None


def _advance_share(share: list) -> tuple[list, float]:
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


def _finish(edit: ActiveEdit, result: EditResult | None = None, error: BaseException | None = None) -> None:
    if edit.future.done():
        return
    if error is not None:
        edit.future.set_exception(error)
    else:
        edit.future.set_result(result)
