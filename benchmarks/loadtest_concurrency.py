"""Closed-loop load at several concurrencies against `sdedit serve` on its defaults.

    python benchmarks/loadtest_concurrency.py [--levels 1,4,16] [--duration 20] [--warmup 3] [--out FILE]

Starts `sdedit serve` (default model, default settings, free loopback ports; the tests'
ServeProcess), runs `sdedit loadtest`'s closed loop at each concurrency in turn (fresh
seeds: no cache hits), prints one row per level and writes every report to JSON (default
benchmarks/results/loadtest_concurrency.json). After each level it reads the server's
/metrics, so the table also shows the server's own count of edits and its mean queue wait:
the client's and the server's numbers side by side. The host's 1-minute load average before
and after each level is recorded too: on a shared machine it says how much else was running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.loadtest.cli import run_loadtest  # noqa: E402
from service.loadtest.report import SLO  # noqa: E402
from service.loadtest.runner import LoadPlan  # noqa: E402
from service.loadtest.workload import RequestOptions  # noqa: E402
from service.testing.servers import ServeProcess, free_port  # noqa: E402

SERVER_SAMPLES = ("sdedit_edit_seconds_count", "sdedit_queue_wait_seconds_sum", "sdedit_queue_wait_seconds_count")
LATENCY = ("min", "mean", "p50", "p90", "p95", "p99", "max")


def server_totals(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals = dict.fromkeys(SERVER_SAMPLES, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def run(levels: list[int], duration: float, warmup: float, work: Path, options: RequestOptions | None = None) -> dict:
    metrics_port = free_port()
    server = ServeProcess(ROOT / "model_repository", "--metrics-port", str(metrics_port), log_path=work / "serve.log")
    rows = []
    try:
        server.wait_serving()
        for level in levels:
            before = server_totals(metrics_port)
            load_before = os.getloadavg()[0]
            plan = LoadPlan(address=server.address, concurrency=level, duration=duration, warmup=warmup)
            report, _ = asyncio.run(run_loadtest(plan, options or RequestOptions(), SLO()))
            after = server_totals(metrics_port)
            diff = {name: after[name] - before[name] for name in SERVER_SAMPLES}
            waits = diff["sdedit_queue_wait_seconds_count"]
            server_view = {"edits": diff["sdedit_edit_seconds_count"],
                           "mean_queue_wait_seconds": diff["sdedit_queue_wait_seconds_sum"] / waits if waits else 0.0}
            rows.append({"concurrency": level, "report": report, "server_metrics": server_view,
                         "load_average_1min": [load_before, os.getloadavg()[0]], "cpus": os.cpu_count()})
    finally:
        server.stop()
    return {"machine": platform.platform(), "python": platform.python_version(), "duration_seconds": duration,
            "warmup_seconds": warmup, "rows": rows}


def print_table(results: dict) -> None:
    print(f"{'conc':>4} {'requests':>8} {'errors':>6} {'req/s':>7} {'images/s':>8} {'calls/s':>8} "
          + " ".join(f"{name:>6}" for name in LATENCY) + f" {'srv edits':>9} {'srv queue':>9} {'load':>9}")
    for row in results["rows"]:
        report = row["report"]
        r, t, lat, srv = report["requests"], report["throughput"], report["latency_seconds"], row["server_metrics"]
        print(f"{row['concurrency']:>4} {r['measured']:>8} {r['errors']:>6} {t['requests_per_second']:>7.2f} "
              f"{t['images_per_second']:>8.2f} {t['network_calls_per_second']:>8.1f} "
              + " ".join("     -" if lat[k] is None else f"{lat[k]:>6.3f}" for k in LATENCY)
              + f" {srv['edits']:>9.0f} {srv['mean_queue_wait_seconds']:>9.3f}"
              + f" {row['load_average_1min'][0]:>4.1f}-{row['load_average_1min'][1]:<4.1f}")
    c = results["rows"][0]["report"]["config"]
    print(f"model {c['model']}, t0 {c['t0']}, {c['steps']} steps, {c['num_samples']} sample, "
          f"{results['duration_seconds']:g} s per level after {results['warmup_seconds']:g} s warm-up; latency in seconds; "
          f"srv edits = completed edits the server counted (warm-up included), srv queue = its mean queue wait (s), "
          f"load = the host's 1-minute load average before-after the level ({results['rows'][0]['cpus']} CPUs)")


def markdown_table(results: dict) -> str:
    """The table of these results in docs/loadtest.md (tests/test_docs.py checks that it carries it)."""
    c = results["rows"][0]["report"]["config"]
    lines = [f"Model `{c['model']}`, t0 {c['t0']:g}, {c['steps']} steps, {c['num_samples']} sample per request, fresh seeds; "
             f"{results['duration_seconds']:g} s measured per level after {results['warmup_seconds']:g} s warm-up.",
             "",
             "| concurrency | requests | req/s | p50 (s) | p99 (s) | server's mean queue wait (s) | host load average (1 min, before-after) |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        report, srv = row["report"], row["server_metrics"]
        lat, (before, after) = report["latency_seconds"], row["load_average_1min"]
        rps = report["throughput"]["requests_per_second"]
        lines.append(f"| {row['concurrency']} | {report['requests']['measured']} | {rps:.2f} | {lat['p50']:.3f} | "
                     f"{lat['p99']:.3f} | {srv['mean_queue_wait_seconds']:.3f} | {before:.1f}-{after:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,4,16", help="comma-separated concurrencies (default 1,4,16)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per level (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per level (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loadtest_concurrency.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdedit-bench-") as work:
        results = run([int(v) for v in args.levels.split(",")], args.duration, args.warmup, Path(work))
    print_table(results)
    print(markdown_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
