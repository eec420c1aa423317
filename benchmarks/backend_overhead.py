"""What a network call costs through each score backend, and what an edit costs around it.

    python benchmarks/backend_overhead.py [--rounds 30] [--calls 10] [--edit-steps 100] [--out FILE]

Backends: `embedded` (ONNX Runtime in process), `triton-grpc` (Triton, tensors in the gRPC
message) and `triton-shm` (Triton, tensors in system shared memory), against a real
tritonserver on loopback serving the CPU variant of model_repository/ (make triton-tools).
ONNX Runtime runs with one intra-op thread in both places. Models: gaussian-vp (a
near-zero-cost network that accepts any size, so the numbers are the transport's) and the
service's default model (the `default_model` setting), at 32x32 and 256x256; a model that
only accepts its native size is reported as n/a at other sizes.

1. Per step: the wall time of one predict_eps call at batch 1, median and p90 of
   rounds x calls samples, the backends interleaved round by round so that background load
   hits them alike.
2. End to end: an edit of --edit-steps network calls through the edit service (validate,
   decode, SDE loop, encode; median of three), divided by the pure network time: the same
   number of calls at the embedded backend's median, the network's own cost with no
   transport and no loop around it.

Prints a table, writes JSON (default benchmarks/results/backend_overhead.json), and exits 1
if shared memory does not beat plain gRPC at 256x256 on the near-zero-cost model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from service.backends.onnx import OnnxScoreModel
from service.backends.registry import ModelRegistry
from service.backends.triton import load_triton_models
from service.backends.triton_local import LocalTriton
from service.backends.variants import write_cpu_repository
from service.config import PROJECT_ROOT, load_settings
from service.metrics import Metrics
from service.pipeline.editing import EditService
from service.pipeline.imaging import encode_png
from service.requests import EditRequestData
from service.sde import build_schedule

REPOSITORY = PROJECT_ROOT / "model_repository"
NEAR_ZERO_MODEL = "gaussian-vp"
SIZES = (32, 256)
BACKENDS = ("embedded", "triton-grpc", "triton-shm")


def per_step(models: dict, x: np.ndarray, t: np.ndarray, rounds: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call for each backend, interleaved round by round."""
    for model in models.values():  # warm-up: sessions, connections, shared-memory regions
        for _ in range(5):
            model.predict_eps(x, t)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(rounds):
        order = list(models)[round_index % len(models):] + list(models)[:round_index % len(models)]
        for name in order:
            for _ in range(calls):
                started = time.perf_counter()
                models[name].predict_eps(x, t)
                samples[name].append(time.perf_counter() - started)
    return samples


def edit_seconds(service: EditService, model: str, size: int, steps: int, repeats: int = 3) -> tuple[float, int]:
    """Median wall time of an edit through the edit service (after a warm-up edit), and its network calls."""
    channels = service.registry.get(model).info.channels
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, channels), dtype=np.uint8)
    request = EditRequestData(image=encode_png(pixels), t0=0.5, model=model, steps=steps, seed=1)
    outcome = asyncio.run(service.edit(service.plan(request)))
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        asyncio.run(service.edit(service.plan(request)))
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds)), outcome.network_calls


def run(rounds: int, calls: int, edit_steps: int, work: Path) -> dict:
    default_model = load_settings(env={}).default_model
    names = list(dict.fromkeys([NEAR_ZERO_MODEL, default_model]))
    repository = write_cpu_repository([REPOSITORY / name for name in names], work / "repository")
    results: dict = {"machine": platform.platform(), "python": platform.python_version(), "default_model": default_model,
                     "rounds": rounds, "calls_per_round": calls, "edit_steps": edit_steps, "rows": []}
    with LocalTriton(repository, work / "tritonserver.log") as triton:
        base = dict(host="127.0.0.1", port=0, metrics_port=-1, model_repository=REPOSITORY, default_model=default_model)
        settings = {
            "embedded": load_settings(env={}, **base),
            "triton-grpc": load_settings(env={}, **base, backend="triton", triton_url=triton.url),
            "triton-shm": load_settings(env={}, **base, backend="triton", triton_url=triton.url, triton_shared_memory=True),
        }
        # one ONNX Runtime thread, like the CPU variant's, so every backend runs the same network cost
        loaded = {"embedded": {name: OnnxScoreModel(REPOSITORY / name, intra_op_threads=1) for name in names}}
        for backend in BACKENDS[1:]:
            loaded[backend] = {name: m for name, m in load_triton_models(settings[backend]).items() if name in names}
        services = {b: EditService(settings[b], ModelRegistry(loaded[b], default_model), None, Metrics()) for b in BACKENDS}
        try:
            for name in names:
                info = loaded["embedded"][name].info
                times = build_schedule(info.sde).model_times
                for size in SIZES:
                    row: dict = {"model": name, "size": f"{size}x{size}", "near_zero_cost": name == NEAR_ZERO_MODEL}
                    results["rows"].append(row)
                    if not info.accepts_size(size, size):
                        row["n/a"] = f"{name} only accepts {info.width}x{info.height}"
                        continue
                    x = np.random.default_rng(1).standard_normal((1, info.channels, size, size), dtype=np.float32)
                    t = times[[len(times) // 2]].astype(np.float32)
                    samples = per_step({b: loaded[b][name] for b in BACKENDS}, x, t, rounds, calls)
                    pure = float(np.median(samples["embedded"]))
                    for backend in BACKENDS:
                        seconds, network_calls = edit_seconds(services[backend], name, size, edit_steps)
                        row[backend] = {
                            "step_median_ms": 1e3 * float(np.median(samples[backend])),
                            "step_p90_ms": 1e3 * float(np.percentile(samples[backend], 90)),
                            "edit_seconds": seconds,
                            "edit_over_pure_network": seconds / (network_calls * pure),
                        }
                    row["grpc_over_shm"] = row["triton-grpc"]["step_median_ms"] / row["triton-shm"]["step_median_ms"]
        finally:
            for service in services.values():
                service.close()  # and its models
    return results


def print_table(results: dict) -> None:
    print(f"per network call at batch 1 (median / p90 ms) and one {results['edit_steps']}-step edit "
          f"(seconds, and x the pure network time); default model {results['default_model']}")
    print(f"{'model':<16} {'size':>8}  {'backend':<12} {'step ms':>9} {'p90 ms':>8} {'edit s':>8} {'edit/pure':>10}")
    for row in results["rows"]:
        if "n/a" in row:
            print(f"{row['model']:<16} {row['size']:>8}  {'n/a':<12} ({row['n/a']})")
            continue
        for backend in BACKENDS:
            r = row[backend]
            print(f"{row['model']:<16} {row['size']:>8}  {backend:<12} {r['step_median_ms']:9.3f} {r['step_p90_ms']:8.3f} "
                  f"{r['edit_seconds']:8.3f} {r['edit_over_pure_network']:10.2f}")
        print(f"{'':<16} {'':>8}  plain gRPC / shared memory per step: {row['grpc_over_shm']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=10, help="calls per backend per round")
    parser.add_argument("--edit-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "benchmarks" / "results" / "backend_overhead.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backend_overhead_") as work:
        results = run(args.rounds, args.calls, args.edit_steps, Path(work))
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    target = next(r for r in results["rows"] if r["near_zero_cost"] and r["size"] == "256x256")
    if target["grpc_over_shm"] <= 1.0:
        print(f"FAIL: shared memory is not faster than plain gRPC at 256x256 ({target['grpc_over_shm']:.2f}x)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
