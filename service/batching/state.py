"""A request's state in the batch scheduler: the active edit (its trajectory, the future its
caller waits on, its stop check, its tenant and weight) and how it leaves."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from service.sde import EditCancelled, EditResult, EditTrajectory, StepEvent

MAX_HANDED_OUT = 2  # steps' work (preview images being encoded) an edit may have outstanding and still take calls
StepCallback = Callable[[StepEvent], "Future | None"]


@dataclass(eq=False)
class ActiveEdit:
    """One admitted edit, from submit until it leaves. `order` is its arrival (oldest first);
    `in_call` is true while it is in a call: it takes its step when the call lands.
    `deadline` (time.monotonic(), or None) bounds every network call it is in.

    on_step may hand work out of the step (a Future: its preview images, encoded on other
    threads); while MAX_HANDED_OUT of them are not done the edit is `held` out of the calls,
    so an edit whose work lags behind waits for it alone, and what it hands out stays bounded.
    `wake` is called when a handed-out piece is done (the scheduler looks again)."""

    trajectory: EditTrajectory
    future: Future  # -> EditResult
    should_stop: Callable[[], bool]
    on_step: StepCallback | None
    order: int
    tenant: str = ""
    weight: float = 1.0
    deadline: float | None = None
    network_seconds: float = 0.0
    in_call: bool = False
    held: bool = False  # set by the scheduler before each decision, from handed_out
    wake: Callable[[], None] = lambda: None
    handed_out: list[Future] = field(default_factory=list)

    @property
    def in_flight(self) -> bool:
        """Not to be put in a call now: in one already, or held behind its handed-out work."""
        return self.in_call or self.held

    def hand_out(self, work: Future) -> None:
        """Keeps a piece of work its step handed out (service/batching/executor.py _advance)."""
        self.handed_out = [f for f in self.handed_out if not f.done()]
        self.handed_out.append(work)
        work.add_done_callback(lambda _: self.wake())

    def lagging(self) -> bool:
        """Whether its handed-out work is too far behind for another call."""
        return sum(not f.done() for f in self.handed_out) >= MAX_HANDED_OUT

    @property
    def images(self) -> int:
        """Its samples: the images it brings to every call (an edit always brings all)."""
        return self.trajectory.batch

    def stop_reason(self) -> BaseException | None:
        """Why it must leave before its next call (its caller gave up, or its stop check
        broke), or None to go on."""
        try:
            stop = self.should_stop()
        except Exception as exc:  # noqa: BLE001 - a broken stop check must not take the others down
            return exc
        if stop:
            return EditCancelled(f"stopped after {self.trajectory.network_calls} network calls")
        return None

    def finish(self, result: EditResult | None = None, error: BaseException | None = None) -> None:
        """Resolves its future (once: a second finish is ignored)."""
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)
