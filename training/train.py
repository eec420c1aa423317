"""Trains the default score network: DDPM epsilon prediction on the shipped digits.

    python -m training.train --out runs/digits --steps 12000

Runs on a CPU (about 0.8 s per batch of 64 on two cores). It checkpoints every few
minutes and on SIGTERM/SIGINT, and resumes from the last checkpoint when started again
with the same --out, so a long run survives interruptions. Everything is seeded; a resumed
run continues the same random streams from the checkpoint.

Choices that speed convergence on a small budget: min-SNR-5 loss weighting (Hang et al.
2023), Adam with a short warm-up, and EMA weights (the exported network).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch

from training.digits import load_split, to_model_range
from training.unet import UNet, UNetConfig, count_parameters

T = 1000
BETA_START, BETA_END = 1e-4, 0.02
GRAD_CLIP = 1.0  # max global gradient norm
# the arguments that shape the weights; stored in every checkpoint (and config.json) so the
# export writes the model card from the run's own values. --steps (the target), --out,
# --threads and the checkpoint cadence do not change what a step computes.
HYPERPARAMETERS = ("batch", "lr", "warmup", "ema", "min_snr", "seed", "base_channels")


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(BETA_START, BETA_END, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).float()


def min_snr_weights(abar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-timestep loss weight for epsilon prediction: min(SNR, gamma) / SNR."""
    snr = abar / (1.0 - abar)
    return torch.clamp(snr, max=gamma) / snr


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/digits"), help="checkpoint and log folder")
    p.add_argument("--steps", type=int, default=12000, help="total optimiser steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--ema", type=float, default=0.9995, help="EMA decay of the exported weights")
    p.add_argument("--min-snr", type=float, default=5.0, help="min-SNR gamma; 0 disables weighting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--keep-every", type=int, default=2000, help="also keep a copy every N steps")
    p.add_argument("--base-channels", type=int, default=32)
    return p.parse_args(argv)


def training_config(args: argparse.Namespace, unet: UNetConfig) -> dict:
    """Everything the export's model card reports about how the weights were trained."""
    return {**{name: getattr(args, name) for name in HYPERPARAMETERS}, "optimizer": "Adam", "grad_clip": GRAD_CLIP,
            "timesteps": T, "beta_start": BETA_START, "beta_end": BETA_END, "unet": unet.to_dict(),
            "recorded_from_step": 0}  # > 0: resumed from a checkpoint that had no config; earlier steps unrecorded


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write never corrupts the last checkpoint


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "last.pt"

    config = UNetConfig(base_channels=args.base_channels)
    model = UNet(config)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    training = training_config(args, config)
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        stored = state.get("training")
        training["recorded_from_step"] = state["step"] if stored is None else stored.get("recorded_from_step", 0)
        if stored is not None and stored != training:
            changed = sorted(k for k in training if stored.get(k) != training[k])
            raise SystemExit(f"{ckpt_path} was trained with other hyper-parameters ({', '.join(changed)}): "
                             "resume with the same flags or train into a new --out")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step = state["step"]
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    else:
        (args.out / "config.json").write_text(json.dumps({"unet": config.to_dict(), "training": training,
                                                          "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    print(f"UNet {count_parameters(model):,} parameters; training to step {args.steps}", flush=True)

    split = load_split()
    data = torch.from_numpy(to_model_range(split.train_images))
    abar = alphas_cumprod()
    weights = min_snr_weights(abar, args.min_snr) if args.min_snr > 0 else torch.ones(T)

    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    log_path = args.out / "loss.csv"
    new_log = not log_path.exists()
    log_file = log_path.open("a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "loss", "unweighted_mse", "lr", "seconds_per_step"])

    def state() -> dict:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "generator": gen.get_state(), "step": step, "unet": config.to_dict(), "training": training}

    last_save = time.monotonic()
    window_loss, window_mse, window_start = [], [], time.monotonic()
    model.train()
    while step < args.steps and not stop["now"]:
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(data), (args.batch,), generator=gen)
        x0 = data[idx]
        t = torch.randint(0, T, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        per_sample = ((model(xt, t.float()) - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (weights[t] * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        window_loss.append(loss.item())
        window_mse.append(per_sample.mean().item())
        if step % 50 == 0:
            sps = (time.monotonic() - window_start) / len(window_loss)
            log.writerow([step, f"{np.mean(window_loss):.5f}", f"{np.mean(window_mse):.5f}", f"{lr:.2e}", f"{sps:.3f}"])
            log_file.flush()
            print(f"step {step} loss {np.mean(window_loss):.4f} mse {np.mean(window_mse):.4f} {sps:.2f}s/step", flush=True)
            window_loss, window_mse, window_start = [], [], time.monotonic()
        if time.monotonic() - last_save > 60 * args.checkpoint_minutes:
            save_checkpoint(ckpt_path, state())
            last_save = time.monotonic()
        if step % args.keep_every == 0:
            save_checkpoint(args.out / f"step{step:06d}.pt", state())
    save_checkpoint(ckpt_path, state())
    log_file.close()
    print(f"saved {ckpt_path} at step {step}", flush=True)
    if not math.isfinite(loss.item()):
        raise SystemExit("training diverged (non-finite loss)")


if __name__ == "__main__":
    main()
