"""Cache-hit and cache-miss latency of Edit, per cache backend and image size.

    .venv/bin/python benchmarks/cache_latency.py [--requests 200] [--steps 10] [--json PATH]

Runs the service in process (ONNX Runtime, the analytic `gaussian-vp` model, which accepts
any size) with each cache backend: none, memory, and redis (a redis-server of its own on a
free loopback port), all three at once. For each size (32x32, 256x256) it sends, one at a
time from gRPC clients on loopback, the backends taking turns request by request:
  - miss: seeded requests, each with a new seed (the loop runs, then the result is stored);
  - hit: the same seeded request again and again (served from the cache).
Backend "none" gives the uncached baseline, so miss minus none is the cost of a lookup
plus a store. Latency is measured by the client, send to response; a few warm-up requests
are left out. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.client import Client, build_request
from service.pipeline.imaging import encode_png
from service.testing.redis_server import RedisServer
from service.testing.servers import InProcessServer, local_settings

ROOT = Path(__file__).resolve().parent.parent

MODEL = "gaussian-vp"
SIZES = (32, 256)
BACKENDS = ("none", "memory", "redis")
WARMUP = 5


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"count": len(ms), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def timed(client: Client, request) -> tuple[float, bool]:
    started = time.perf_counter()
    response = client.edit(request, timeout=60)
    return time.perf_counter() - started, response.cached


def measure(addresses: dict[str, str], size: int, args: argparse.Namespace) -> list[dict]:
    """Rows for one size. Backends take turns request by request, so a slower moment of
    the machine falls on all of them alike."""
    guide = encode_png(np.random.default_rng(size).integers(0, 256, (size, size, 1), dtype=np.uint8))

    def request(seed: int):
        return build_request(guide, t0=0.5, steps=args.steps, seed=seed, model=MODEL)

    clients = {backend: Client(address) for backend, address in addresses.items()}
    misses: dict[str, list[float]] = {b: [] for b in clients}
    hits: dict[str, list[float]] = {b: [] for b in clients if b != "none"}
    try:
        for i in range(-WARMUP, args.requests):
            for backend, client in clients.items():
                seconds, cached = timed(client, request(size * 1_000_000 + i))  # a new seed: a miss
                assert not cached, "a miss was served from the cache"
                if i >= 0:
                    misses[backend].append(seconds)
        for _ in range(args.requests):
            for backend in hits:
                seconds, cached = timed(clients[backend], request(size * 1_000_000))  # stored above
                assert cached, "a repeated seeded request missed the cache"
                hits[backend].append(seconds)
    finally:
        for client in clients.values():
            client.close()
    rows = [{"backend": b, "size": size, "kind": "uncached" if b == "none" else "miss", **percentiles(misses[b])}
            for b in clients]
    rows += [{"backend": b, "size": size, "kind": "hit", **percentiles(hits[b])} for b in hits]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per row (default 200)")
    parser.add_argument("--steps", type=int, default=10, help="network calls per edit on a miss (default 10)")
    parser.add_argument("--json", type=Path, default=ROOT / "runs" / "benchmarks" / "cache_latency.json")
    args = parser.parse_args(argv)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as workdir:
        redis = RedisServer(Path(workdir)).start()
        servers = {b: InProcessServer(local_settings(ROOT / "model_repository", cache=b, redis_url=redis.url,
                                                     max_active_edits=1)) for b in BACKENDS}
        try:
            for size in SIZES:
                rows += measure({b: server.address for b, server in servers.items()}, size, args)
        finally:
            for server in servers.values():
                server.stop()
            redis.stop()

    print(f"Edit latency, {MODEL}, t0 0.5, {args.steps} steps on a miss, {args.requests} requests per row, one at a time")
    print(f"{'backend':8} {'size':>8} {'kind':9} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for row in sorted(rows, key=lambda r: (BACKENDS.index(r["backend"]), r["size"], r["kind"] == "hit")):
        print(f"{row['backend']:8} {row['size']:>4}x{row['size']:<3} {row['kind']:9} {row['p50_ms']:8.2f} "
              f"{row['p99_ms']:8.2f} {row['mean_ms']:8.2f}")
    for size in SIZES:
        for backend in BACKENDS[1:]:
            hit = next(r for r in rows if (r["backend"], r["size"], r["kind"]) == (backend, size, "hit"))
            base = next(r for r in rows if (r["backend"], r["size"]) == ("none", size))
            print(f"{backend} {size}x{size}: a hit takes {hit['p50_ms'] / base['p50_ms']:.2f} x the uncached p50")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "cache_latency", "model": MODEL, "t0": 0.5, "steps": args.steps, "requests": args.requests,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "rows": rows,
    }, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
