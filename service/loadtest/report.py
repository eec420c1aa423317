"""The load test's report: numbers from the records, the SLO verdict, a text table.

The JSON form is documented in docs/loadtest.md and docs/loadtest.schema.json
(SCHEMA_VERSION changes whenever a field changes meaning or goes away).
Latency covers the requests sent in the measured window; throughput, the answers received
in it (service/loadtest/runner.py). Percentiles are nearest-rank: p99 is a latency that 99% of the requests did not exceed,
one that some request really had. Latency statistics cover successful requests; errors
are counted apart (a fast RESOURCE_EXHAUSTED would otherwise flatter the p99). Errors include
the open loop's requests that were due while it backed off after UNAVAILABLE and so were
not sent (`requests.not_sent`): from the user's side, each is a request the service failed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sdedit.v1 import sdedit_pb2 as pb
from service.loadtest.runner import TIMING_FIELDS, LoadPlan, Record, RunResult
from service.loadtest.workload import Workload

SCHEMA_VERSION = 1
PERCENTILES = (50, 90, 95, 99)
MAX_ERROR_KINDS = 20
MAX_MESSAGE_CHARS = 300
DEFAULT_MAX_ERROR_RATE = 0.01  # the command's --max-error-rate unless given: a run that mostly fails is not a pass


@dataclass(frozen=True)
class SLO:
    max_p99: float | None = None  # seconds
    max_error_rate: float | None = None  # fraction of measured requests


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_stats(values: Iterable[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {name: None for name in ("min", "mean", "max", *(f"p{p}" for p in PERCENTILES))}
    stats: dict[str, float | None] = {"min": ordered[0], "mean": sum(ordered) / len(ordered), "max": ordered[-1]}
    stats.update({f"p{p}": percentile(ordered, p) for p in PERCENTILES})
    return stats


def _rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else 0.0


def error_summary(records: list[Record]) -> list[dict]:
    kinds = Counter((r.code, r.message[:MAX_MESSAGE_CHARS]) for r in records if r.code != "OK")
    return [{"code": code, "message": message, "count": n} for (code, message), n in kinds.most_common(MAX_ERROR_KINDS)]


def group_summary(records: list[Record]) -> list[dict]:
    groups = []
    for size, kind in sorted({(r.size, r.seed_kind) for r in records}):
        members = [r for r in records if (r.size, r.seed_kind) == (size, kind)]
        ok = sorted(r.latency for r in members if r.code == "OK")
        groups.append({"size": size, "seed_kind": kind, "count": len(members), "ok": len(ok),
                       "cache_hits": sum(r.cached for r in members),
                       "p50": percentile(ok, 50) if ok else None, "p99": percentile(ok, 99) if ok else None})
    return groups


def check_slo(latency: dict, error_rate: float, measured: int, slo: SLO) -> list[str]:
    violations = []
    if slo.max_p99 is not None:
        p99 = latency["p99"]
        if p99 is None:
            violations.append("p99 latency: no successful request to measure")
        elif p99 > slo.max_p99:
            violations.append(f"p99 latency {p99:.3f} s > {slo.max_p99:g} s")
    if slo.max_error_rate is not None and (measured == 0 or error_rate > slo.max_error_rate):
        violations.append(f"error rate {error_rate:.2%} > {slo.max_error_rate:.2%}" if measured else "no request measured")
    return violations


def build_report(plan: LoadPlan, workload: Workload, result: RunResult, slo: SLO, triton: dict | None = None) -> dict:
    measured = [r for r in result.records if not r.warmup]
    ok = [r for r in measured if r.code == "OK"]
    computed = [r for r in ok if not r.cached]
    seconds = result.window_seconds
    answered = [r for r in result.records if r.code == "OK" and 0 <= r.done <= seconds]  # in the window
    latency = latency_stats(r.latency for r in ok)
    errors = len(measured) - len(ok)
    error_rate = errors / len(measured) if measured else 0.0
    violations = check_slo(latency, error_rate, len(measured), slo)
    hits = sum(r.cached for r in ok)
    model: pb.ModelInfo = workload.model
    options = workload.options
    return {
        "schema_version": SCHEMA_VERSION,
        "started_at": datetime.fromtimestamp(result.started_at, UTC).isoformat(timespec="seconds"),
        "config": {"address": plan.address, "mode": plan.mode, "concurrency": plan.concurrency,
                   "rate_per_second": plan.rate, "arrivals": plan.arrivals, "duration_seconds": plan.duration,
                   "requests": plan.requests, "warmup_seconds": plan.warmup, "rpc": plan.rpc,
                   "timeout_seconds": plan.timeout, "seed": plan.seed, "model": model.name, "t0": options.t0,
                   "steps": workload.steps, "sampler": workload.sampler, "spacing": workload.spacing,
                   "num_samples": options.num_samples,
                   "fixed_seed_fraction": options.fixed_seed_fraction, "sizes": [f"{w}x{h}" for w, h in workload.sizes]},
        "model": {"name": model.name, "width": model.width, "height": model.height, "channels": model.channels,
                  "flexible_size": model.flexible_size, "content_hash": model.content_hash},
        "window_seconds": seconds,
        "requests": {"measured": len(measured), "ok": len(ok), "errors": errors,
                     "not_sent": sum(not r.called for r in measured), "warmup": len(result.records) - len(measured)},
        "throughput": {
            "answers_in_window": len(answered),
            "requests_per_second": _rate(len(answered), seconds),
            "images_per_second": _rate(sum(r.images for r in answered), seconds),
            "network_calls_per_second": _rate(sum(r.network_calls for r in answered if not r.cached), seconds),
        },
        "latency_seconds": latency,
        "service_time_seconds": latency_stats(r.service_time for r in ok),
        "status_codes": dict(Counter(r.code for r in measured).most_common()),
        "errors": error_summary(measured),
        "cache": {"hits": hits, "misses": len(ok) - hits, "hit_ratio": hits / len(ok) if ok else None},
        "server_seconds_mean": {name.removesuffix("_seconds"): (sum(r.timings[name] for r in computed) / len(computed)
                                                                if computed else None) for name in TIMING_FIELDS},
        "groups": group_summary(measured),
        "slo": {"max_p99_seconds": slo.max_p99, "max_error_rate": slo.max_error_rate, "error_rate": error_rate,
                "passed": not violations, "violations": violations},
        "triton": triton,
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def describe_plan(report: dict) -> str:
    c = report["config"]
    loop = (f"open loop, {c['rate_per_second']:g} req/s ({c['arrivals']}), at most {c['concurrency'] or 'unlimited'} in flight"
            if c["mode"] == "open" else f"closed loop, concurrency {c['concurrency']}")
    amount = f"{c['requests']} requests" if c["requests"] else f"{c['duration_seconds']:g} s"
    return (f"{loop}; {amount} after {c['warmup_seconds']:g} s warm-up; model {c['model']}, {c['rpc']}, t0 {c['t0']:g}, "
            f"{c['steps']} steps ({c.get('sampler', '?')}, {c.get('spacing', '?')}), {c['num_samples']} sample(s), sizes {', '.join(c['sizes'])}, "
            f"fixed seeds {c['fixed_seed_fraction']:.0%}")


def format_report(report: dict) -> str:
    r, t, cache = report["requests"], report["throughput"], report["cache"]
    lines = [describe_plan(report)]
    hit_ratio = "-" if cache["hit_ratio"] is None else f"{cache['hit_ratio']:.1%}"
    not_sent = f", {r['not_sent']} of them not sent (backing off)" if r["not_sent"] else ""
    lines.append(f"requests {r['measured']} (ok {r['ok']}, errors {r['errors']}{not_sent}; {r['warmup']} warm-up not counted) "
                 f"in a {report['window_seconds']:.2f} s window: {t['requests_per_second']:.2f} req/s, "
                 f"{t['images_per_second']:.2f} images/s, {t['network_calls_per_second']:.1f} network calls/s, "
                 f"cache hits {cache['hits']}/{r['ok']} ({hit_ratio})")
    names = ("min", "mean", "p50", "p90", "p95", "p99", "max")
    lines.append(f"{'seconds':<32}" + "".join(f"{n:>9}" for n in names))
    for label, key in (("latency (from intended send)", "latency_seconds"), ("service time (from actual send)", "service_time_seconds")):
        lines.append(f"{label:<32}" + "".join(f"{_seconds(report[key][n]):>9}" for n in names))
    server = report["server_seconds_mean"]
    if server["total"] is not None:
        lines.append("server, mean seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in server.items()))
    if len(report["groups"]) > 1:
        for g in report["groups"]:
            lines.append(f"  {g['size']} {g['seed_kind']:<6} {g['count']:>6} requests, ok {g['ok']}, "
                         f"cache hits {g['cache_hits']}, p50 {_seconds(g['p50'])}, p99 {_seconds(g['p99'])}")
    lines.append("status codes: " + ", ".join(f"{code} {n}" for code, n in report["status_codes"].items()))
    lines.extend(f"  {e['count']} x {e['code']}: {e['message']}" for e in report["errors"])
    if report["triton"] is not None:
        lines.extend(format_triton(report["triton"]))
    slo = report["slo"]
    if slo["max_p99_seconds"] is not None or slo["max_error_rate"] is not None:
        lines.append("SLO: " + ("met" if slo["passed"] else "MISSED: " + "; ".join(slo["violations"])))
    return "\n".join(lines)


def format_triton(triton: dict) -> list[str]:
    if triton.get("error"):
        return [f"triton: {triton['error']}"]
    lines = []
    for name, m in triton["models"].items():
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.2f} ms"

        batch = "-" if m["avg_batch_size"] is None else f"{m['avg_batch_size']:.2f}"
        lines.append(f"triton {name}: {m['requests']:g} requests, {m['executions']:g} executions, average batch {batch}, "
                     f"queue {ms(m['avg_queue_seconds'])} and compute {ms(m['avg_compute_seconds'])} per request")
    return lines or ["triton: no inference during the run"]
