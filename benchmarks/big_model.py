"""The paper's full-size model, imported and served end to end: a 3x256x256 DDPM.

    python benchmarks/big_model.py [--calls 20] [--batches 1 2 4] [--triton-calls 4] [--no-triton]

The SDEdit reference architecture (configs/church.yml: ch 128, ch_mult [1, 1, 2, 2, 4, 4],
2 residual blocks, attention at 16x16; 113.7M parameters) with random weights is saved as a
reference-format state dict, imported with `sdedit import reference` (fp32, and --fp16), and
served by

1. the embedded backend (ONNX Runtime in process): network time per call at each batch
   size, and one edit of --calls network calls through the gRPC service, with its stages;
2. the Triton CPU stand-in (tritonserver's Python backend running ONNX Runtime with one
   thread, service/backends/triton_local.py; needs `make triton-tools`): time per call at
   batch 1 and one edit of --triton-calls calls (fewer: one thread is slower).

Random weights: the numbers are of cost, not of image quality. On a small shared CPU this
takes minutes; it prints a table and writes benchmarks/results/big_model.json.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.backends.onnx import OnnxScoreModel  # noqa: E402
from service.backends.repository import load_model_info  # noqa: E402
from service.client import Client, build_request  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.pipeline.imaging import encode_png  # noqa: E402

CHURCH_YML = """\
data:
    dataset: "LSUN"
    category: "church_outdoor"
    image_size: 256
    channels: 3
model:
    type: "simple"
    in_channels: 3
    out_ch: 3
    ch: 128
    ch_mult: [1, 1, 2, 2, 4, 4]
    num_res_blocks: 2
    attn_resolutions: [16, ]
    dropout: 0.0
    var_type: fixedsmall
    ema_rate: 0.999
    ema: True
    resamp_with_conv: True
diffusion:
    beta_schedule: linear
    beta_start: 0.0001
    beta_end: 0.02
    num_diffusion_timesteps: 1000
"""
CHECK_SIZE = 64  # the importer's ONNX-vs-PyTorch check runs at 64x64 (a 256x256 torch call takes ~16 s here)
MEMORY_BUDGET_MIB = 8192  # this process also holds torch and the imported weights: the default 3 GiB leaves no room for an edit


def per_call(model, batches: list[int], size: int = 256) -> dict[int, float]:
    rng = np.random.default_rng(0)
    out = {}
    for batch in batches:
        x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        started = time.perf_counter()
        model.predict_eps(x, np.full(batch, 500.0, np.float32))
        out[batch] = time.perf_counter() - started
        print(f"  batch {batch}: {out[batch]:.2f} s per call", flush=True)
    return out


def one_edit(settings, name: str, calls: int) -> dict:
    from service.testing.servers import InProcessServer

    pixels = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    server = InProcessServer(settings)
    try:
        with Client(server.address) as client:
            started = time.perf_counter()
            response = client.edit(build_request(encode_png(pixels), t0=0.5, steps=calls, seed=3, model=name), timeout=3600)
            wall = time.perf_counter() - started
    finally:
        server.stop()
    t = response.timings
    return {"network_calls": response.network_calls, "wall_seconds": wall, "queue_seconds": t.queue_seconds,
            "decode_seconds": t.decode_seconds, "sde_seconds": t.sde_seconds, "network_seconds": t.network_seconds,
            "encode_seconds": t.encode_seconds, "total_seconds": t.total_seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="network calls of the embedded edit")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--triton-calls", type=int, default=4, help="network calls of the Triton edit")
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "big_model.json")
    args = parser.parse_args(argv)

    import torch

    from training.importers.common import ImportOptions
    from training.importers.reference import import_reference
    from training.reference_unet import ReferenceConfig, ReferenceUNet, count_parameters

    results: dict = {"machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
                     "model": "SDEdit reference DDPM, configs/church.yml architecture, random weights (seed 0)"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        torch.manual_seed(0)
        model = ReferenceUNet(ReferenceConfig()).eval()
        results["parameters"] = count_parameters(model)
        torch.save(model.state_dict(), tmp_path / "church.ckpt")
        (tmp_path / "church.yml").write_text(CHURCH_YML)
        del model
        repository = tmp_path / "repo"
        imports = {}
        for name, fp16 in (("ddpm-256", False), ("ddpm-256-fp16", True)):
            started = time.perf_counter()
            model_dir = import_reference(tmp_path / "church.ckpt", tmp_path / "church.yml",
                                         ImportOptions(name=name, repository=repository, fp16=fp16, check_size=CHECK_SIZE))
            imports[name] = {"seconds": time.perf_counter() - started,
                             "onnx_bytes": (model_dir / "1" / "model.onnx").stat().st_size,
                             "card": (model_dir / "README.md").read_text()}
            print(f"imported {name}: {imports[name]['onnx_bytes'] / 1e6:.1f} MB in {imports[name]['seconds']:.0f} s", flush=True)
        results["imports"] = imports
        # the fp16 model is compared, not served: the served one is the fp32 file
        import shutil

        shutil.move(str(repository / "ddpm-256-fp16"), str(tmp_path / "ddpm-256-fp16"))
        info = load_model_info(repository / "ddpm-256")
        results["memory_declared"] = {"bytes_per_pixel": info.memory_bytes_per_pixel,
                                      "attention_downsample": info.attention_downsample}

        print("embedded (ONNX Runtime in process):", flush=True)
        embedded = OnnxScoreModel(repository / "ddpm-256")
        embedded.predict_eps(np.zeros((1, 3, 256, 256), np.float32), np.full(1, 10.0, np.float32))  # warm-up
        results["embedded_per_call"] = per_call(embedded, args.batches)
        embedded.close()
        settings = load_settings(env={}, host="127.0.0.1", port=0, metrics_port=-1, model_repository=repository,
                                 default_model="ddpm-256", cache="none", shutdown_linger_seconds=0.0,
                                 memory_budget_mib=MEMORY_BUDGET_MIB)
        results["embedded_edit"] = one_edit(settings, "ddpm-256", args.calls)
        print(f"  edit of {args.calls} calls: {results['embedded_edit']['total_seconds']:.1f} s", flush=True)

        if not args.no_triton:
            from service.backends.triton import load_triton_models
            from service.backends.triton_local import LocalTriton, cpu_repository

            print("Triton CPU stand-in (Python backend, ONNX Runtime, one thread):", flush=True)
            target = cpu_repository([repository], tmp_path / "cpu-repo")
            with LocalTriton(target, tmp_path / "tritonserver.log") as triton:
                triton.wait_ready(600)
                triton_settings = load_settings(env={}, host="127.0.0.1", port=0, metrics_port=-1, model_repository=repository,
                                                default_model="ddpm-256", cache="none", backend="triton", triton_url=triton.url,
                                                triton_timeout_seconds=600.0, triton_startup_seconds=600.0,
                                                shutdown_linger_seconds=0.0, memory_budget_mib=MEMORY_BUDGET_MIB)
                models = load_triton_models(triton_settings)
                results["triton_per_call"] = per_call(models["ddpm-256"], [1])
                for served in models.values():
                    served.close()
                results["triton_edit"] = one_edit(triton_settings, "ddpm-256", args.triton_calls)
                print(f"  edit of {args.triton_calls} calls: {results['triton_edit']['total_seconds']:.1f} s", flush=True)

    sizes = {name: value["onnx_bytes"] for name, value in imports.items()}
    print("\n| measure | value |\n|---|---|")
    print(f"| parameters | {results['parameters']:,} |")
    print(f"| ONNX fp32 / fp16 weights | {sizes['ddpm-256'] / 1e6:.1f} MB / {sizes['ddpm-256-fp16'] / 1e6:.1f} MB |")
    for batch, seconds in results["embedded_per_call"].items():
        print(f"| embedded, batch {batch} | {seconds:.2f} s per call ({seconds / batch:.2f} s per image) |")
    edit = results["embedded_edit"]
    print(f"| embedded edit, {edit['network_calls']} calls | total {edit['total_seconds']:.1f} s: decode {edit['decode_seconds']:.3f}, "
          f"SDE loop {edit['sde_seconds']:.1f} (network {edit['network_seconds']:.1f}), encode {edit['encode_seconds']:.3f} |")
    if "triton_per_call" in results:
        print(f"| Triton CPU, batch 1 | {results['triton_per_call'][1]:.2f} s per call |")
        edit = results["triton_edit"]
        print(f"| Triton edit, {edit['network_calls']} calls | total {edit['total_seconds']:.1f} s: SDE loop {edit['sde_seconds']:.1f} "
              f"(network {edit['network_seconds']:.1f}) |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
