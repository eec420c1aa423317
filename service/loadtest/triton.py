"""Triton's own view of a load test: its Prometheus counters scraped before and after the run.

Triton (its metrics port, 8002 by default) keeps cumulative per-model counters; the
difference over the run gives, per model: requests, executions (batches the backend ran),
inferences (batch items), the queue time and compute time per request, and so the average
batch size (inferences / executions, as Triton's docs define it).
"""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = {
    "nv_inference_request_success": "requests",
    "nv_inference_exec_count": "executions",
    "nv_inference_count": "inferences",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_us",
}

Snapshot = dict[str, dict[str, float]]  # model -> counter (our name) -> value, summed over versions


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def parse(text: str) -> Snapshot:
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = COUNTERS.get(sample.name.removesuffix("_total"))
            model = sample.labels.get("model")
            if name is None or model is None:
                continue
            counters = snapshot.setdefault(model, {})
            counters[name] = counters.get(name, 0.0) + sample.value
    return snapshot


def _ratio(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
    return numerator / denominator * scale if denominator > 0 else None


def difference(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float | None]]:
    """Per model that did any work during the run: totals and averages over the run."""
    models = {}
    for model, counters in sorted(after.items()):
        old = before.get(model, {})
        d = {name: counters.get(name, 0.0) - old.get(name, 0.0) for name in COUNTERS.values()}
        if d["requests"] <= 0 and d["executions"] <= 0:
            continue
        items = d["inferences"] if "inferences" in counters else d["requests"]
        models[model] = {
            "requests": d["requests"],
            "executions": d["executions"],
            "inferences": items,
            "avg_batch_size": _ratio(items, d["executions"]),
            "avg_queue_seconds": _ratio(d["queue_us"], d["requests"], 1e-6),
            "avg_compute_seconds": _ratio(d["compute_us"], d["requests"], 1e-6),
        }
    return models


class TritonWatch:
    """Scrapes at the start of the measured run and at its end; never fails the load test."""

    # Triton counts a request's success just after sending its response: without a pause
    # the last scrape can miss the last request (measured: 11 of 12 counted).
    SETTLE_SECONDS = 0.5

    def __init__(self, url: str, settle_seconds: float = SETTLE_SECONDS):
        self.url = url
        self.settle_seconds = settle_seconds
        self.before: Snapshot | None = None
        self.error: str | None = None

    def _scrape(self) -> Snapshot | None:
        try:
            return parse(fetch(self.url))
        except (OSError, ValueError) as exc:
            self.error = f"cannot read {self.url}: {exc}"
            return None

    def start(self) -> None:
        self.before = self._scrape()

    def finish(self) -> dict:
        if self.before is not None:
            time.sleep(self.settle_seconds)
        after = self._scrape() if self.before is not None else None
        if after is None or self.before is None:
            return {"url": self.url, "error": self.error, "models": {}}
        return {"url": self.url, "error": None, "models": difference(self.before, after)}
