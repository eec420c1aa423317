"""Step-level batching with a real network on an accelerator (issue 12, item 8).

    python benchmarks/gpu_batching.py [--device cuda] [--dtype fp16] [--levels 1,8,32]
                                      [--batches 1,8,32] [--depths 1,2] [--duration 8] [--warmup 2]
                                      [--calls 20] [--max-batch 32] [--ch 128] [--resolution 256]
                                      [--out FILE]

The network: the SDEdit reference DDPM UNet (training/reference_unet.py with the reference's
configs/church.yml: ch 128, ch_mult 1,1,2,2,4,4, 2 residual blocks, attention at 16x16;
113.7M parameters) at 3x256x256, random weights from a fixed seed (the numbers are of cost,
not of image quality), in torch on --device, eval and inference mode. --ch and --resolution
shrink it (the CPU smoke test in tests/test_benchmarks.py).

1. The network alone at each of --batches: images/s of a call as the service makes it (a
   numpy array in, host to device, forward, device to host, numpy out), and of the forward
   alone (the input already on the device; synchronized).
2. The scheduler on that network: closed loops of --levels single-sample edits through a
   BatchScheduler (benchmarks/scheduler_loop.py, the loop of benchmarks/batching.py's (b):
   t0 0.5, --calls calls, dpmpp_2m_sde, logSNR-uniform, fresh seeds) at each of --depths, and
   the per-edit baseline (max batch 1: every call is batch 1); edits/s beside the bound at
   that concurrency: the network alone's end-to-end images/s at batch min(c, max batch),
   measured in (1) (interpolated between measured batches), / calls per edit.

Needs numpy and torch only (no gRPC, no ONNX Runtime), so it runs as is on a GPU machine
with a copy of this repository. Prints tables and writes JSON (default
benchmarks/results/gpu_batching.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scheduler_loop import scheduler_level  # noqa: E402
from service.sde import EditParams, SDESpec, build_schedule  # noqa: E402

T0 = 0.5
SAMPLER = "dpmpp_2m_sde"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchNetwork:
    """predict_eps(x, t) on numpy arrays, as a backend of the service sees a network."""

    def __init__(self, ch: int, resolution: int, device: str, dtype: str, seed: int = 0):
        import torch

        from training.reference_unet import ReferenceConfig, ReferenceUNet

        self.torch = torch
        torch.manual_seed(seed)
        # the reference's attention resolution (16 of 256) scaled with the image
        config = ReferenceConfig(ch=ch, resolution=resolution, attn_resolutions=(max(resolution // 16, 1),))
        self.dtype = getattr(torch, DTYPES[dtype])
        self.device = torch.device(device)
        self.net = ReferenceUNet(config).eval().to(device=self.device, dtype=self.dtype)
        # the timestep embedding is computed in float32 (training/reference_unet.py): it meets
        # the network's precision at its first Linear
        self.net.temb.dense[0].register_forward_pre_hook(lambda module, args: (args[0].to(module.weight.dtype),))
        self.parameters = sum(p.numel() for p in self.net.parameters())
        self.shape = (3, resolution, resolution)

    def predict_eps(self, x: np.ndarray, t: np.ndarray, deadline: float | None = None) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            xs = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).to(self.dtype)
            ts = torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32)).to(self.device)
            return self.net(xs, ts).float().cpu().numpy()

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def alone(self, batch: int, seconds: float) -> dict:
        """images/s end to end (numpy to numpy) and of the forward alone, at one batch size."""
        torch = self.torch
        rng = np.random.default_rng(batch)
        x = rng.standard_normal((batch, *self.shape), dtype=np.float32)
        t = np.full(batch, 500.0, dtype=np.float32)
        for _ in range(2):  # warm-up: kernels chosen, memory pools grown
            self.predict_eps(x, t)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or calls < 3:
            self.predict_eps(x, t)
            calls += 1
        end_to_end = batch * calls / (time.perf_counter() - started)
        with torch.inference_mode():
            xs = torch.from_numpy(x).to(self.device).to(self.dtype)
            ts = torch.from_numpy(t).to(self.device)
            self.net(xs, ts)
            self.sync()
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds or calls < 3:
                self.net(xs, ts)
                calls += 1
            self.sync()
            forward = batch * calls / (time.perf_counter() - started)
        return {"batch": batch, "end_to_end_images_per_second": end_to_end, "forward_images_per_second": forward,
                "end_to_end_ms_per_call": 1e3 * batch / end_to_end}


def bound_images_per_second(alone: list[dict], batch: int) -> float:
    """The network alone's end-to-end images/s at `batch`, interpolated in time per call
    (a call's time is close to affine in its batch) between the measured batches."""
    sizes = np.array([a["batch"] for a in alone], dtype=np.float64)
    ms = np.array([a["end_to_end_ms_per_call"] for a in alone])
    order = np.argsort(sizes)
    return batch / (float(np.interp(batch, sizes[order], ms[order])) / 1e3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda; cpu for a smoke test)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="the network's precision (default fp16)")
    parser.add_argument("--levels", default="1,8,32", help="concurrencies (default 1,8,32)")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes of the network alone (default 1,8,32)")
    parser.add_argument("--depths", default="1,2", help="pipeline depths of the batched scheduler (default 1,2)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per loop (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per loop (default 2)")
    parser.add_argument("--alone-seconds", type=float, default=2.0, help="seconds per batch of the network alone")
    parser.add_argument("--calls", type=int, default=20, help="network calls per edit (default 20)")
    parser.add_argument("--max-batch", type=int, default=32, help="the scheduler's largest call, images (default 32)")
    parser.add_argument("--ch", type=int, default=128, help="the UNet's base channels (default 128, the reference's)")
    parser.add_argument("--resolution", type=int, default=256, help="image side (default 256)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_batching.json")
    args = parser.parse_args(argv)
    ints = lambda text: [int(v) for v in text.split(",") if v]

    import torch

    network = TorchNetwork(args.ch, args.resolution, args.device, args.dtype)
    results: dict = {"machine": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                     "torch": torch.__version__, "device": args.device, "dtype": args.dtype,
                     "device_name": torch.cuda.get_device_name() if network.device.type == "cuda" else "cpu",
                     "network": {"architecture": "SDEdit reference DDPM UNet (training/reference_unet.py)", "ch": args.ch,
                                 "shape": "x".join(map(str, network.shape)), "parameters": network.parameters,
                                 "weights": "random (seed 0)"},
                     "calls_per_edit": args.calls, "max_batch_images": args.max_batch,
                     "duration_seconds": args.duration, "warmup_seconds": args.warmup}
    print(f"{results['device_name']}: {network.parameters / 1e6:.1f}M-parameter UNet at {results['network']['shape']}, "
          f"{args.dtype}", flush=True)
    results["alone"] = []
    for batch in ints(args.batches):
        row = network.alone(batch, args.alone_seconds)
        results["alone"].append(row)
        print(f"  alone, batch {batch:>3}: {row['end_to_end_images_per_second']:8.1f} images/s end to end, "
              f"{row['forward_images_per_second']:8.1f} forward only", flush=True)

    schedule = build_schedule(SDESpec(sde_type="vp_discrete"))
    params = EditParams(t0=T0, steps=args.calls, sampler=SAMPLER, spacing="logsnr_uniform")
    guide = np.random.default_rng(0).uniform(-1, 1, network.shape).astype(np.float32)
    results["params"] = {"t0": T0, "steps": args.calls, "sampler": SAMPLER, "spacing": params.spacing}
    results["rows"] = []
    paths = [("batched", depth, args.max_batch) for depth in ints(args.depths)] + [("per_edit", 1, 1)]
    for level in ints(args.levels):
        for path, depth, max_batch in paths:
            batch = min(level, max_batch)
            ideal = bound_images_per_second(results["alone"], batch) / args.calls
            row = scheduler_level(level, args.duration, args.warmup, args.calls, network.predict_eps, schedule, params,
                                  guide, max_batch, depth, ideal_edits_per_second=ideal)
            row["path"] = path
            results["rows"].append(row)
            print(f"  {path:<8} depth {depth} concurrency {level:>3}: {row['edits_per_second']:.2f} edits/s, bound "
                  f"{ideal:.2f} at batch {batch}", flush=True)
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


def print_tables(results: dict) -> None:
    net = results["network"]
    print(f"\n{results['device_name']} ({results['device']}, torch {results['torch']}), {net['architecture']}, "
          f"{net['parameters'] / 1e6:.1f}M parameters, {net['shape']}, {results['dtype']}, {net['weights']}")
    print(f"{'batch':>5} {'img/s e2e':>10} {'img/s fwd':>10} {'ms/call':>8}")
    for a in results["alone"]:
        print(f"{a['batch']:>5} {a['end_to_end_images_per_second']:>10.1f} {a['forward_images_per_second']:>10.1f} "
              f"{a['end_to_end_ms_per_call']:>8.2f}")
    print(f"\nthe scheduler, {results['calls_per_edit']} calls per edit ({SAMPLER}, t0 {T0}), max batch "
          f"{results['max_batch_images']}; bound = the network alone's end-to-end images/s at the loop's batch / calls")
    print(f"{'path':<9} {'depth':>5} {'conc':>4} {'edits/s':>7} {'bound':>7} {'/bound':>6} {'img/call':>8} {'net ms':>7} "
          f"{'cpu ms':>7} {'out ms':>7} {'proc/ss':>7} {'p50 s':>7}")
    fmt = lambda v, spec=".2f", w=7: f"{'-':>{w}}" if v is None else f"{v:>{w}{spec}}"
    for r in results["rows"]:
        print(f"{r['path']:<9} {r['pipeline_depth']:>5} {r['concurrency']:>4} {fmt(r['edits_per_second'])} "
              f"{fmt(r.get('ideal_edits_per_second'))} {fmt(r.get('edits_per_second_over_ideal'), '.2f', 6)} "
              f"{fmt(r['images_per_call'], '.2f', 8)} {fmt(r['network_ms_per_tick'])} {fmt(r['tick_cpu_ms'])} "
              f"{fmt(r['outside_network_wall_ms_per_tick'])} {fmt(r['process_cpu_ms_per_sample_step'])} "
              f"{fmt(r['latency_p50_seconds'], '.3f')}")


if __name__ == "__main__":
    main()
    sys.exit(0)
