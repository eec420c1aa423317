"""`sdedit import diffusers DIR`: a diffusers UNet2DModel folder, or a pipeline folder with
unet/ and scheduler/ (google/ddpm-*-256, google/ncsnpp-*, or one's own).

The scheduler config says the family:
- DDPMScheduler / DDIMScheduler / PNDMScheduler / DPMSolver... (discrete, linear betas):
  vp_discrete, the network called with the DDPM index as a float, eps out (prediction_type
  epsilon; a learned variance's extra channels are dropped);
- ScoreSdeVeScheduler: ve with its sigma_min/max and N; diffusers' NCSN++ UNet (Fourier
  time embedding) is called with sigma and returns the score (it divides by sigma itself),
  and was trained on images in [0, 1] (score_sde's uncentred data), so data_range 0,1 by
  default (--data-range -1,1 for a model trained on centred data).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from service.sde.schedules import SDESpec
from training.importers import ImportFailed
from training.importers.common import ImportOptions, Network, content_digest, write_imported

DISCRETE_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                       "EulerDiscreteScheduler", "UniPCMultistepScheduler")


def locate(folder: Path) -> tuple[Path, Path | None]:
    """(the UNet's folder, its scheduler config or None) in a UNet or a pipeline folder."""
    if (folder / "unet" / "config.json").is_file():
        unet_dir = folder / "unet"
    elif (folder / "config.json").is_file():
        unet_dir = folder
    else:
        raise ImportFailed(f"{folder}: neither a UNet2DModel folder (config.json) nor a pipeline folder (unet/config.json)")
    for candidate in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json",
                      unet_dir.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return unet_dir, candidate
    return unet_dir, None


def spec_and_convention(scheduler: dict | None, unet_config: dict, data_range: str | None) -> tuple[SDESpec, dict[str, str], list[str]]:
    notes: list[str] = []
    fourier = unet_config.get("time_embedding_type") == "fourier"
    kind = (scheduler or {}).get("_class_name", "")
    if scheduler is None:
        if fourier:
            raise ImportFailed("a Fourier-embedding (NCSN++) UNet needs its scheduler_config.json (ScoreSdeVeScheduler: "
                               "sigma_min, sigma_max): none found beside it or in ../scheduler/")
        scheduler, kind = {}, "DDPMScheduler"
        notes.append("no scheduler config found: DDPM's linear betas 1e-4..0.02 over 1000 steps assumed")
    if kind == "ScoreSdeVeScheduler":
        data_range = data_range or "0,1"
        scale = 2.0 if data_range == "0,1" else 1.0  # service sigma = 2 x the network's for [0, 1] data
        spec = SDESpec(sde_type="ve", timesteps=int(scheduler.get("num_train_timesteps", 2000)),
                       sigma_min=scale * float(scheduler.get("sigma_min", 0.01)),
                       sigma_max=scale * float(scheduler.get("sigma_max", 1348.0)))
        convention = {"time_input": "sigma", "network_output": "score" if fourier else "eps", "data_range": data_range}
        notes.append(f"ScoreSdeVeScheduler: sigma {scheduler.get('sigma_min', 0.01)}..{scheduler.get('sigma_max', 1348.0)} in the "
                     f"network's units; data range {data_range}" + (" (service sigma = 2 x network sigma)" if scale == 2 else ""))
        if not fourier:
            notes.append("a positional-embedding UNet with a VE scheduler: assumed to take sigma and return eps")
        return spec, convention, notes
    if kind not in DISCRETE_SCHEDULERS:
        raise ImportFailed(f"scheduler {kind!r} is not supported (known: {', '.join((*DISCRETE_SCHEDULERS, 'ScoreSdeVeScheduler'))})")
    if fourier:
        raise ImportFailed("a Fourier-embedding UNet with a discrete DDPM scheduler: no known convention")
    betas = scheduler.get("beta_schedule", "linear")
    if betas != "linear" or scheduler.get("trained_betas"):
        raise ImportFailed(f"beta_schedule {betas!r}: only linear betas (DDPM's) are supported by the service's schedules")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ImportFailed(f"prediction_type {prediction!r}: only epsilon prediction is supported")
    if data_range not in (None, "-1,1"):
        raise ImportFailed("--data-range 0,1 is only exact for VE models")
    spec = SDESpec(sde_type="vp_discrete", timesteps=int(scheduler.get("num_train_timesteps", 1000)),
                   beta_min=float(scheduler.get("beta_start", 1e-4)), beta_max=float(scheduler.get("beta_end", 0.02)))
    variance = scheduler.get("variance_type", "fixed_small")
    notes.append(f"{kind}: linear betas, epsilon prediction, variance_type {variance}")
    return spec, {"time_input": "index", "network_output": "eps", "data_range": "-1,1"}, notes


class _Exported(torch.nn.Module):
    """unet(x, t).sample, the first `channels` output channels (a learned variance's dropped)."""

    def __init__(self, unet: torch.nn.Module, channels: int):
        super().__init__()
        self.unet = unet
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.unet(x, t).sample
        return out[:, : self.channels] if out.shape[1] != self.channels else out


def classic_attention(unet: torch.nn.Module) -> None:
    """The plain matmul-softmax attention processor: scaled_dot_product_attention exports
    badly at low opsets (diffusers #4691); the arithmetic is the same."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())


def load_network(folder: Path, data_range: str | None = None) -> Network:
    from diffusers import UNet2DModel

    unet_dir, scheduler_path = locate(folder)
    unet_config = json.loads((unet_dir / "config.json").read_text())
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ImportFailed(f"{unet_dir}: {unet_config.get('_class_name')} is not a UNet2DModel")
    scheduler = json.loads(scheduler_path.read_text()) if scheduler_path else None
    spec, convention, notes = spec_and_convention(scheduler, unet_config, data_range)
    unet = UNet2DModel.from_pretrained(unet_dir).eval().float()
    classic_attention(unet)
    config = unet.config
    channels = int(config.in_channels)
    if config.out_channels not in (channels, 2 * channels):
        raise ImportFailed(f"out_channels {config.out_channels} is neither in_channels {channels} nor twice it")
    if config.out_channels == 2 * channels:
        notes.append("the output's second half (a learned variance) is dropped: the samplers use their own variances")
    blocks = list(config.block_out_channels)
    resolution = config.sample_size if isinstance(config.sample_size, int) else int(config.sample_size[0])
    levels = len(blocks)
    level_channels = [(blocks[0], 0)]
    for level, width in enumerate(blocks):
        level_channels += [(width, level)] * config.layers_per_block
        if level != levels - 1:
            level_channels.append((width, level + 1))
    attention_levels = [level for level, kind in enumerate(config.down_block_types) if kind.startswith("Attn")]
    attention_levels.append(levels - 1)  # the middle block
    embedding = "Fourier (NCSN++)" if config.time_embedding_type == "fourier" else "sinusoidal"
    architecture = (f"diffusers UNet2DModel: block_out_channels {blocks}, {config.layers_per_block} resnets per block, "
                    f"blocks {list(config.down_block_types)}, {embedding} time embedding")
    return Network(
        module=_Exported(unet, channels), spec=spec, convention=convention, channels=channels, resolution=resolution,
        size_multiple=2 ** (levels - 1), architecture=architecture, source=f"diffusers folder {folder.resolve()}",
        parameters=sum(p.numel() for p in unet.parameters()), level_channels=level_channels,
        attention_levels=sorted(set(attention_levels)), notes=notes,
    )


def import_diffusers(folder: Path, options: ImportOptions, data_range: str | None = None) -> Path:
    network = load_network(folder, data_range)
    return write_imported(network, options, network_source_hash(folder))


def network_source_hash(folder: Path) -> str:
    unet_dir, _ = locate(folder)
    weights = sorted(unet_dir.glob("diffusion_pytorch_model*.*"))
    return content_digest(weights[0]) if weights else "unknown"
