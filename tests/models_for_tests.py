"""Instrumented wrappers around real score models (the network still runs)."""

from __future__ import annotations

import threading
import time


class CountingModel:
    """Counts and timestamps network calls and keeps the deadline each was made with; optionally
    sleeps per call to make edits slow."""

    def __init__(self, inner, delay: float = 0.0):
        self.inner = inner
        self.info = inner.info
        self.delay = delay
        self.call_times: list[float] = []
        self.deadlines: list[float | None] = []  # predict_eps's deadline argument, per call
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.call_times)

    def predict_eps(self, x, t, deadline=None):
        with self._lock:
            self.call_times.append(time.monotonic())
            self.deadlines.append(deadline)
        if self.delay:
            time.sleep(self.delay)
        return self.inner.predict_eps(x, t, deadline)

    def ready(self) -> bool:
        return self.inner.ready()

    def close(self) -> None:
        self.inner.close()


def counting(delay: float = 0.0):
    models: dict[str, CountingModel] = {}

    def wrap(inner):
        models[inner.info.name] = CountingModel(inner, delay)
        return models[inner.info.name]

    wrap.models = models  # type: ignore[attr-defined]
    return wrap
