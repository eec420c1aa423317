"""A request's state in the batch scheduler: the active edit (its trajectory, the future its
caller waits on, its stop check, its tenant and weight) and how it leaves."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from service.sde import EditCancelled, EditResult, EditTrajectory, StepEvent


@dataclass(eq=False)
class ActiveEdit:
    """One admitted edit, from submit until it leaves. `order` is its arrival (oldest first);
    `in_flight` is true while it is in a call: it takes its step when the call lands.
    `deadline` (time.monotonic(), or None) bounds every network call it is in."""

    trajectory: EditTrajectory
    future: Future  # -> EditResult
    should_stop: Callable[[], bool]
    on_step: Callable[[StepEvent], None] | None
    order: int
    tenant: str = ""
    weight: float = 1.0
    deadline: float | None = None
    network_seconds: float = 0.0
    in_flight: bool = False

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
