"""Closed loops for the batching benchmarks: edits back to back from a number of workers, and
the same through a BatchScheduler on any predict_eps(x, t). numpy and the scheduler only (no
gRPC), so benchmarks/gpu_batching.py runs it on a machine with just numpy and torch."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.batching import BatchScheduler, TickStats
from service.sde import EditParams, EditTrajectory, GaussianNoise, NoiseSchedule

EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
CPU_BATCH = 8  # issue 12's target: CPU per sample-step outside the network at batch 8


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class Window:
    """A closed loop's measured window: edits that finished inside it, their latencies."""

    def __init__(self, started: float, ended: float, latencies: list[float]):
        self.started, self.ended, self.latencies = started, ended, latencies

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def summary(self) -> dict:
        n = len(self.latencies)
        return {"edits": n, "seconds": self.seconds, "edits_per_second": n / self.seconds,
                "latency_p50_seconds": percentile(self.latencies, 50), "latency_p99_seconds": percentile(self.latencies, 99),
                "latency_mean_seconds": float(np.mean(self.latencies)) if n else None}


class LoadLoop:
    """`concurrency` workers running one_edit(seed) back to back (fresh seeds) until stop();
    every edit's (start, end)."""

    def __init__(self, concurrency: int, one_edit):
        self.edits: list[tuple[float, float]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._seeds = itertools.count()
        self._lock = threading.Lock()
        self._one_edit = one_edit
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(concurrency)]
        for thread in self._threads:
            thread.start()

    def _worker(self) -> None:
        while not self._stop.is_set() and not self.errors:
            with self._lock:
                seed = next(self._seeds)
            began = time.perf_counter()
            try:
                self._one_edit(seed)
            except BaseException as exc:  # noqa: BLE001 - raised by stop()
                self.errors.append(exc)
                return
            with self._lock:
                self.edits.append((began, time.perf_counter()))

    def stop(self) -> None:
        """No new edits; waits for those running to end."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self.errors:
            raise self.errors[0]


def closed_loop(concurrency: int, warmup: float, duration: float, one_edit, on_window=None) -> Window:
    """A LoadLoop whose edits that end inside [start + warmup, start + warmup + duration] are
    measured; no edit starts after the window. on_window(phase) is called at the window's
    start and end ("start", "end") for snapshots of counters."""
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + duration
    loop = LoadLoop(concurrency, one_edit)
    try:
        for phase, at in (("start", window_start), ("end", window_end)):
            time.sleep(max(0.0, at - time.perf_counter()))
            if on_window is not None:
                on_window(phase)
    finally:
        loop.stop()
    return Window(window_start, window_end, [ended - began for began, ended in loop.edits
                                             if window_start <= ended <= window_end])


def scheduler_level(level: int, duration: float, warmup: float, calls: int, predict_eps: EpsFn, schedule: NoiseSchedule,
                    params: EditParams, guide: np.ndarray, max_batch: int, pipeline_depth: int,
                    ideal_edits_per_second: float | None = None, cpu_batch: int = CPU_BATCH) -> dict:
    """One closed loop of `level` edits through a fresh BatchScheduler on predict_eps(x, t):
    edits/s (from sample-steps), latency, and per tick the device time and the CPU and wall
    time outside the network (TickStats). With ideal_edits_per_second, the ratio to it."""
    ticks: list[tuple[float, TickStats]] = []
    recording = threading.Event()

    def on_tick(stats: TickStats) -> None:
        if recording.is_set():
            ticks.append((time.perf_counter(), stats))

    scheduler = BatchScheduler(f"loop-{level}", predict_eps, max_batch, on_tick=on_tick, pipeline_depth=pipeline_depth)
    cpu: dict[str, float] = {}

    def one_edit(seed: int) -> None:
        trajectory = EditTrajectory(schedule, guide, None, params, [GaussianNoise(seed)])  # the service's noise
        result = scheduler.submit(trajectory).result(600)
        if result.network_calls != calls or not np.isfinite(result.samples).all():
            raise RuntimeError("an edit went wrong: wrong number of calls or a non-finite sample")

    def on_window(phase: str) -> None:
        cpu[phase] = time.process_time()
        (recording.set if phase == "start" else recording.clear)()

    try:
        window = closed_loop(level, warmup, duration, one_edit, on_window)
    finally:
        scheduler.close()
    stats = [s for _, s in ticks]
    images = sum(s.images for s in stats)
    periods = np.diff([at for at, _ in ticks])  # wall time from one tick's end to the next's
    network = np.array([s.network_seconds for s in stats[1:]])
    outside = periods - network  # wall time of each tick outside its network call
    at_batch = [s for s in stats if s.images == cpu_batch]
    # Edits that start together finish together (a cohort of `level` at each 20th call), so
    # edits finished in the window come in steps of a cohort; the sample-steps made in it do
    # not: edits/s is measured as sample-steps / calls per edit over the window.
    steps_rate = images / calls / window.seconds
    row = {"concurrency": level, "pipeline_depth": pipeline_depth, **window.summary(),
           "finished_edits_per_second": window.summary()["edits_per_second"], "edits_per_second": steps_rate,
           "ticks": len(stats), "images_per_call": images / len(stats) if stats else None,
           "network_ms_per_tick": 1e3 * float(np.mean([s.network_seconds for s in stats])) if stats else None,
           "tick_cpu_ms": 1e3 * float(np.mean([s.cpu_seconds for s in stats])) if stats else None,
           "tick_cpu_ms_p99": 1e3 * float(np.percentile([s.cpu_seconds for s in stats], 99)) if stats else None,
           "outside_network_wall_ms_per_tick": 1e3 * float(np.median(outside)) if len(outside) else None,
           "tick_cpu_ms_per_sample_step": 1e3 * sum(s.cpu_seconds for s in stats) / images if images else None,
           "outside_network_wall_ms_per_sample_step": (1e3 * float(np.sum(outside)) / sum(s.images for s in stats[1:])
                                                       if len(outside) else None),
           "process_cpu_ms_per_sample_step": 1e3 * (cpu["end"] - cpu["start"]) / images if images else None,
           "process_cpu_fraction": (cpu["end"] - cpu["start"]) / window.seconds,
           "load_average_1min": os.getloadavg()[0]}
    if ideal_edits_per_second:
        row["ideal_edits_per_second"] = ideal_edits_per_second
        row["edits_per_second_over_ideal"] = steps_rate / ideal_edits_per_second
    if at_batch:
        row[f"tick_cpu_ms_per_sample_step_at_batch_{cpu_batch}"] = (1e3 * float(np.mean([s.cpu_seconds for s in at_batch]))
                                                                    / cpu_batch)
    return row
