"""The batch scheduler's loop: decide -> execute -> update, tick after tick, on its own thread.

decide (lock held): edits whose caller gave up leave; the split decision (costmodel.py) says
how many calls to have in flight; the fair share (policy.py) picks each call's edits.
execute: the executor (executor.py) launches those calls and lands the oldest in flight.
update: the landed call's cost joins the fit, finished or failed edits leave, the others are
free for the next call, and the tick's statistics (TickStats) go to the observer.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from service.batching.costmodel import CallCosts, CostFit, SplitState, decide_split
from service.batching.executor import EpsFn, Executor, Flight, Landing
from service.batching.policy import call_room, fair_share
from service.batching.state import ActiveEdit, StepCallback
from service.errors import DeadlineExceeded
from service.sde import EditCancelled, EditResult, EditTrajectory

log = logging.getLogger(__name__)
IDLE_EXIT_SECONDS = 5.0  # a scheduler's thread ends after this long with nothing to run
DEADLINE_SLACK = 1e-3  # seconds: a deadline this close counts as passed (the backends' own slack)
HELD_RECHECK_SECONDS = 0.05  # with only held edits: how often their stop checks are looked at meanwhile


@dataclass
class TickStats:
    """What one tick did, for metrics: images in the call, edits in it, seconds of each part."""

    images: int
    edits: int
    network_seconds: float
    cpu_seconds: float  # the tick's own work outside the network (its thread's CPU time)
    noise_wait_seconds: float = 0.0  # waiting, after the call, for noise still being drawn on other threads


class BatchScheduler:
    def __init__(self, name: str, eps_fn: EpsFn, max_batch_images: int,
                 on_tick: Callable[[TickStats], None] | None = None, noise_threads: int = 2, pipeline_depth: int = 1):
        """pipeline_depth 2: up to two calls in flight (two groups of edits), when the fit of
        the network's costs says it pays (costmodel.decide_split); 1: one call, then its steps."""
        if max_batch_images < 1:
            raise ValueError(f"max_batch_images must be >= 1, got {max_batch_images}")
        if pipeline_depth not in (1, 2):
            raise ValueError(f"pipeline_depth must be 1 or 2, got {pipeline_depth}")
        self.name = name
        self.max_batch_images = max_batch_images
        self.pipeline_depth = pipeline_depth
        self.costs: CostFit = CallCosts()  # the network's cost per call, fitted to the calls landed
        self.split_state = SplitState()
        self._executor = Executor(name, eps_fn, pipeline_depth, noise_threads)
        self._on_tick = on_tick
        self._edits: list[ActiveEdit] = []  # arrival order
        self._served: dict[str, float] = {}  # images served / weight, per active tenant (policy.fair_share)
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._order = itertools.count()

    @property
    def eps_fn(self) -> EpsFn:
        return self._executor.eps_fn

    @property
    def active(self) -> int:
        with self._wake:
            return len(self._edits)

    def submit(self, trajectory: EditTrajectory, should_stop: Callable[[], bool] | None = None,
               on_step: StepCallback | None = None, tenant: str = "", weight: float = 1.0,
               deadline: float | None = None) -> Future:
        """Adds an edit; its future resolves to its EditResult (or its error) when it leaves.
        tenant, weight: whose it is, and that tenant's share of a full call. deadline
        (time.monotonic(), or None): each call it is in is bounded by the earliest deadline of
        that call's edits (the backend's predict_eps(x, t, deadline)). on_step(event) runs after
        each of its steps, on the scheduler's threads: it may return a Future of work it handed
        out (state.py ActiveEdit.hand_out), behind which the edit, and only it, then waits."""
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        if trajectory.batch > self.max_batch_images:
            raise ValueError(f"{trajectory.batch} samples exceed the batch of {self.max_batch_images} images")
        future: Future = Future()
        edit = ActiveEdit(trajectory, future, should_stop or (lambda: False), on_step, next(self._order), tenant, weight,
                          deadline, wake=self._poke)
        with self._wake:
            if self._closed:
                raise RuntimeError(f"scheduler {self.name} is closed")
            self._edits.append(edit)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"sdedit-batch-{self.name}", daemon=True)
                self._thread.start()
            self._wake.notify()
        return future

    def _poke(self) -> None:
        """An edit's handed-out work is done: it may be ready for a call again."""
        with self._wake:
            self._wake.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stops the thread; edits still active fail with EditCancelled."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._executor.close()

    # --- the scheduler's thread -------------------------------------------------------

    def _run(self) -> None:
        flights: deque[Flight] = deque()  # calls in flight, oldest first
        while True:
            with self._wake:
                if not self._wait_for_work(flights):
                    return
                launches = [] if self._closed else self._decide(len(flights))
            for batch in launches:
                try:
                    flights.append(self._executor.launch(batch))
                except Exception as exc:  # a bug in one call's set-up fails its edits, not the thread
                    log.exception("batch scheduler %s: a call could not be sent", self.name)
                    self._leave(batch, error=exc)
            if flights:
                flight = flights.popleft()
                try:
                    self._update(self._executor.land(flight))
                except Exception as exc:  # likewise after the call
                    log.exception("batch scheduler %s: a call's steps failed", self.name)
                    self._leave(flight.batch, error=exc)

    def _wait_for_work(self, flights: deque[Flight]) -> bool:
        """Waits for an edit or a call in flight (lock held). False: the thread ends, after
        IDLE_EXIT_SECONDS idle (a later submit starts a new one) or once closed with no call in
        flight (the edits still active fail)."""
        deadline = time.monotonic() + IDLE_EXIT_SECONDS
        while not flights and not self._closed and not any(not e.in_call and not e.lagging() for e in self._edits):
            if self._edits:  # every edit held behind its handed-out work: woken when some is done
                self._wake.wait(HELD_RECHECK_SECONDS)
                if any(e.stop_reason() is not None for e in self._edits):
                    break  # a held edit's caller gave up: it leaves now
                deadline = time.monotonic() + IDLE_EXIT_SECONDS
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._thread = None
                return False
            self._wake.wait(remaining)
        if self._closed and not flights:
            edits, self._edits, self._thread = self._edits, [], None
            for edit in edits:
                edit.finish(error=EditCancelled("the service is stopping"))
            return False
        return True

    def _decide(self, in_flight: int) -> list[list[ActiveEdit]]:
        """The calls to launch now, each a batch of whole edits (lock held)."""
        self._drop_stopped()
        for edit in self._edits:
            edit.held = edit.lagging()
        images = sum(edit.images for edit in self._edits)
        decision = decide_split(self.pipeline_depth, images, self.split_state, self.costs)
        self.split_state.split = decision.split
        room = call_room(self.max_batch_images, decision.groups, images)
        launches = []
        while in_flight + len(launches) < decision.groups:
            share = fair_share(self._edits, self._served, room)
            self._served = share.served
            if not share.chosen:
                break
            for edit in share.chosen:
                edit.in_call = True
            launches.append(share.chosen)
        return launches

    def _drop_stopped(self) -> None:
        """Edits whose caller gave up leave before their next call (lock held)."""
        kept = []
        for edit in self._edits:
            reason = None if edit.in_call else edit.stop_reason()
            if reason is None:
                kept.append(edit)
            else:
                edit.finish(error=reason)
        self._edits = kept

    def _update(self, landing: Landing) -> None:
        """After a call: its cost joins the fit; finished or failed edits leave, the others are
        free for the next call; the serial work joins the split state; the tick is reported."""
        flight, network_seconds = landing.flight, landing.network_seconds
        if network_seconds is not None:  # the call answered (even if a draw failed after it)
            self.costs.add(flight.images, network_seconds)
        if landing.error is not None or network_seconds is None:
            self._leave(failing(flight.batch, landing.error), error=landing.error)
            return
        failed = []
        for edit, exc in landing.outcomes:
            if exc is not None:
                failed.append((edit, exc))
            elif edit.trajectory.done:
                self._leave([edit], result=edit.trajectory.result(edit.network_seconds))
        for edit, exc in failed:
            self._leave([edit], error=exc)
        with self._wake:
            for edit in flight.batch:
                edit.in_call = False
        serial = flight.launch_seconds + time.perf_counter() - landing.wall_started  # this thread's wall time outside the call
        self.split_state.observe(serial, flight.images)
        if self._on_tick is not None:
            try:
                self._on_tick(TickStats(images=flight.images, edits=len(flight.batch), network_seconds=network_seconds,
                                        cpu_seconds=(flight.launch_cpu_seconds + time.thread_time() - landing.cpu_started
                                                     + landing.share_cpu_seconds),
                                        noise_wait_seconds=landing.noise_wait_seconds))
            except Exception:  # a broken observer must not stop the scheduler
                log.exception("batch scheduler %s: the tick observer failed", self.name)

    def _leave(self, edits: list[ActiveEdit], result: EditResult | None = None, error: BaseException | None = None) -> None:
        with self._wake:
            leaving = set(map(id, edits))
            self._edits = [e for e in self._edits if id(e) not in leaving]
        for edit in edits:
            edit.finish(result, error)


def failing(batch: list[ActiveEdit], error: BaseException | None) -> list[ActiveEdit]:
    """The edits a failed call fails: all of them, but for a call stopped at its deadline (the
    earliest of its edits') only those whose deadline passed; the others took no step from it
    (their noise stays drawn) and are free for the next call (on the scheduler's thread)."""
    if not isinstance(error, DeadlineExceeded):
        return batch
    now = time.monotonic()
    expired = [edit for edit in batch if edit.deadline is not None and edit.deadline <= now + DEADLINE_SLACK]
    if not expired:
        return batch  # no deadline of theirs passed: the backend's own limit, not ours
    for edit in batch:
        edit.in_call = False
    return expired
