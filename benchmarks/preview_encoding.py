"""Does a preview-heavy edit slow the edits that share its network calls?

    .venv/bin/python benchmarks/preview_encoding.py [--size 512] [--steps 40] [--rounds 3] [--json PATH]

Runs the service in process (ONNX Runtime, the analytic `gaussian-vp` model, any size) and,
in rounds, two edits of one shape started together so that they share every call: a plain
edit B (no previews) and a mate A with `preview_every` 1 (a PNG per sample at every step) or,
as the control, the same mate without previews. Per phase it reports the batch scheduler's
ticks while B runs (the wall time of each tick outside the network call: inputs, every
edit's step and whatever runs on the scheduler's thread after it, which is where preview
images used to be encoded) and B's own latency. The ratios, previews over no previews, say what the previews
cost the batch-mate; 1.0 is no cost. Phases take turns round by round, so a slower moment
of the machine falls on both alike. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.client import Client, build_request
from service.pipeline.imaging import encode_png
from service.testing.servers import InProcessServer, local_settings

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gaussian-vp"
PHASES = ("mate without previews", "mate with a preview every step")


def run_phase(srv: InProcessServer, ticks: list, guide: bytes, args: argparse.Namespace, previews: bool) -> dict:
    """B and its mate A, started together; the ticks recorded until B's last, and B's latency."""
    mate = build_request(guide, t0=0.8, steps=args.steps, seed=1, num_samples=args.samples,
                         preview_every=1 if previews else 0)
    plain = build_request(guide, t0=0.8, steps=args.steps, seed=2)
    with Client(srv.address) as client:
        mate_events: list = []
        mate_thread = threading.Thread(target=lambda: mate_events.extend(client.stream_edit(mate, timeout=600)))
        del ticks[:]
        mate_thread.start()
        started = time.perf_counter()
        response = client.edit(plain, timeout=600)
        ended = time.perf_counter()
        mate_thread.join()
    plain_seconds = ended - started
    recorded = [(at, stats) for at, stats in ticks if at <= ended]  # until B's last tick (B is in every one)
    if previews and sum(e.WhichOneof("event") == "preview" for e in mate_events) != args.steps:
        raise RuntimeError("the preview-heavy mate did not get a preview at every step")
    periods = np.diff([at for at, _ in recorded])
    outside = periods - np.array([s.network_seconds for _, s in recorded[1:]])
    return {"plain_seconds": plain_seconds, "plain_network_calls": response.network_calls,
            "ticks": len(recorded), "outside_network_ms": (outside * 1000).tolist()}


def summary(rows: list[dict]) -> dict:
    outside = np.concatenate([row["outside_network_ms"] for row in rows])
    latency = [row["plain_seconds"] for row in rows]
    return {"ticks": int(outside.size), "tick_outside_network_ms_median": float(np.median(outside)),
            "tick_outside_network_ms_p90": float(np.percentile(outside, 90)),
            "plain_edit_seconds_median": float(np.median(latency))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side, pixels")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--samples", type=int, default=2, help="samples of the preview-heavy mate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "preview_encoding.json")
    args = parser.parse_args(argv)

    srv = InProcessServer(local_settings(ROOT / "model_repository", default_model=MODEL, cache="none", http_port=-1))
    ticks: list = []
    srv.service.schedulers._on_tick = lambda stats: ticks.append((time.perf_counter(), stats))  # every tick, timed
    guide = encode_png(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 1), dtype=np.uint8))
    rows: dict[str, list[dict]] = {phase: [] for phase in PHASES}
    try:
        run_phase(srv, ticks, guide, argparse.Namespace(**{**vars(args), "steps": 3}), True)  # warm-up
        for _ in range(args.rounds):
            for phase in PHASES:
                rows[phase].append(run_phase(srv, ticks, guide, args, phase != PHASES[0]))
    finally:
        srv.stop()
    results = {phase: summary(rows[phase]) for phase in PHASES}
    base, heavy = results[PHASES[0]], results[PHASES[1]]
    ratios = {"tick_outside_network_median": heavy["tick_outside_network_ms_median"] / base["tick_outside_network_ms_median"],
              "plain_edit_seconds": heavy["plain_edit_seconds_median"] / base["plain_edit_seconds_median"]}

    print(f"{args.size}x{args.size}, {args.steps} steps, mate with {args.samples} samples, {args.rounds} rounds")
    print(f"{'phase':<34}{'ticks':>7}{'outside net p50 ms':>20}{'p90 ms':>9}{'plain edit s':>14}")
    for phase, r in results.items():
        print(f"{phase:<34}{r['ticks']:>7}{r['tick_outside_network_ms_median']:>20.2f}"
              f"{r['tick_outside_network_ms_p90']:>9.2f}{r['plain_edit_seconds_median']:>14.3f}")
    print(f"ratio previews / none: tick outside the network {ratios['tick_outside_network_median']:.2f}, "
          f"the plain edit's latency {ratios['plain_edit_seconds']:.2f}")
    report = {"size": args.size, "steps": args.steps, "mate_samples": args.samples, "rounds": args.rounds,
              "machine": platform.platform(), "results": results, "ratios": ratios, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
