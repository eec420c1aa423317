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
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.sdedit import EditCancelled, EditResult, EditTrajectory, StepEvent

log = logging.getLogger(__name__)
EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
IDLE_EXIT_SECONDS = 5.0  # a scheduler's thread ends after this long with nothing to run


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


class BatchScheduler:
    def __init__(self, name: str, eps_fn: EpsFn, max_batch_images: int,
                 on_tick: Callable[[TickStats], None] | None = None, noise_threads: int = 2):
        if max_batch_images < 1:
            raise ValueError(f"max_batch_images must be >= 1, got {max_batch_images}")
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
        if self._noise is not None:
            self._noise.shutdown(wait=True)

    # --- the scheduler's thread -------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                deadline = time.monotonic() + IDLE_EXIT_SECONDS
                while not self._edits and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._thread = None  # a later submit starts a new one
                        return
                    self._wake.wait(remaining)
                if self._closed:
                    edits, self._edits, self._thread = self._edits, [], None
                    for edit in edits:
                        _finish(edit, error=EditCancelled("the service is stopping"))
                    return
                self._drop_stopped()
                batch = self._choose()
            if batch:
                self._tick(batch)

    def _drop_stopped(self) -> None:
        """Edits whose caller gave up leave before the next call (lock held)."""
        kept = []
        for edit in self._edits:
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
        """Whole edits for one call: a fair share across tenants by weight, oldest first
        within one (lock held)."""
        queues: dict[str, list[ActiveEdit]] = {}
        for edit in self._edits:  # arrival order: each tenant's edits oldest first
            queues.setdefault(edit.tenant, []).append(edit)
        served = self._served
        for gone in set(served) - set(queues):
            del served[gone]
        level = min(served.values(), default=0.0)
        for tenant in queues:
            served.setdefault(tenant, level)  # newly active: level with the least served
        if sum(edit.trajectory.batch for edit in self._edits) <= self.max_batch_images:
            chosen = list(self._edits)  # everything fits: nobody waits
            for edit in chosen:
                served[edit.tenant] += edit.trajectory.batch / edit.weight
        else:
            chosen = self._fill(queues, served)
        low = min(served.values(), default=0.0)
        for tenant in served:  # keep the counts small: only their differences matter
            served[tenant] -= low
        return chosen

    def _fill(self, queues: dict[str, list[ActiveEdit]], served: dict[str, float]) -> list[ActiveEdit]:
        """Fills one call edit by edit from the least served tenant that has an edit that fits
        (ties: the tenant with the oldest edit), taking that tenant's oldest edit that fits."""
        chosen, room = [], self.max_batch_images
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

    def _tick(self, batch: list[ActiveEdit]) -> None:
        cpu_started = time.thread_time()
        inputs = [edit.trajectory.network_input() for edit in batch]
        x = inputs[0][0] if len(inputs) == 1 else np.concatenate([i[0] for i in inputs])
        t = inputs[0][1] if len(inputs) == 1 else np.concatenate([i[1] for i in inputs])
        drawing = self._draw_noise(batch)
        cpu_before_call = time.thread_time() - cpu_started
        started = time.perf_counter()
        try:
            eps = np.asarray(self.eps_fn(x, t), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - the backend failed: every edit of this call fails with it
            _wait_all(drawing)
            self._leave(batch, error=exc)
            return
        network_seconds = time.perf_counter() - started
        waited = time.perf_counter()
        try:
            _wait_all(drawing)
        except Exception as exc:  # noqa: BLE001 - a draw failed: its edits' noise is not there
            self._leave(batch, error=exc)
            return
        noise_wait_seconds = time.perf_counter() - waited
        cpu_started = time.thread_time()
        done, failed = [], []
        offset = 0
        for edit in batch:
            n = edit.trajectory.batch
            edit.network_seconds += network_seconds
            try:
                event = edit.trajectory.advance(eps[offset:offset + n])
                if edit.on_step is not None:
                    edit.on_step(event)
            except Exception as exc:  # noqa: BLE001 - the edit fails with it; the others go on
                failed.append((edit, exc))
            else:
                if edit.trajectory.done:
                    done.append(edit)
            offset += n
        for edit in done:
            self._leave([edit], result=edit.trajectory.result(edit.network_seconds))
        for edit, exc in failed:
            self._leave([edit], error=exc)
        if self._on_tick is not None:
            self._on_tick(TickStats(images=len(x), edits=len(batch), network_seconds=network_seconds,
                                    cpu_seconds=cpu_before_call + time.thread_time() - cpu_started,
                                    noise_wait_seconds=noise_wait_seconds))

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
