"""`sdedit import reference CKPT --config YAML`: a state dict of the SDEdit reference code's
`Model` (models/diffusion.py; bedroom, church_outdoor, celeba_hq at 256x256) with its
configs/*.yml, loaded with strict key matching into training/reference_unet.py.

The reference saves a plain state dict (torch.save(model.state_dict())); DDIM-style
checkpoints ([state_dict, optimizer, ...]) and DataParallel's `module.` prefix are accepted
too. diffusers' conversion script for the original DDPM checkpoints names the downsampling
convolution `downsample.op`; the SDEdit files name it `downsample.conv`: both load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.sde.schedules import SDESpec
from training.importers import ImportFailed
from training.importers.common import ImportOptions, Network, content_digest, write_imported
from training.reference_unet import ReferenceConfig, ReferenceUNet, count_parameters


def read_config(path: Path) -> ReferenceConfig:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
        return ReferenceConfig.from_yaml_dict(raw or {})
    except (OSError, yaml.YAMLError, ValueError, TypeError) as exc:
        raise ImportFailed(f"{path}: not a reference config: {exc}") from exc


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a reference checkpoint, keys normalised; and what was normalised."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ImportFailed(f"{path}: cannot read it as a torch state dict: {exc}") from exc
    notes = []
    if isinstance(loaded, (list, tuple)):
        loaded = loaded[0]
        notes.append("the checkpoint is a list ([state_dict, ...], as the DDIM code saves): its first entry is the model")
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ImportFailed(f"{path}: not a state dict of tensors")
    state = dict(loaded)
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
        notes.append("DataParallel's `module.` prefix removed")
    if any(".downsample.op." in key for key in state):
        state = {key.replace(".downsample.op.", ".downsample.conv."): value for key, value in state.items()}
        notes.append("`downsample.op` (diffusers' name for the original DDPM checkpoints) read as `downsample.conv`")
    return state, notes


def load_network(checkpoint: Path, config_path: Path) -> Network:
    config = read_config(config_path)
    if config.beta_schedule != "linear":
        raise ImportFailed(f"beta_schedule {config.beta_schedule!r}: only linear betas are supported")
    state, notes = read_state_dict(checkpoint)
    model = ReferenceUNet(config)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ImportFailed(f"{checkpoint} does not match {config_path} (strict key matching): "
                           f"missing {result.missing_keys[:8]}{'...' if len(result.missing_keys) > 8 else ''}, "
                           f"unexpected {result.unexpected_keys[:8]}{'...' if len(result.unexpected_keys) > 8 else ''}")
    model.load_state_dict(state, strict=True)
    levels = len(config.ch_mult)
    level_channels = [(config.ch, 0)]
    resolution, attention_levels = config.resolution, []
    for level, mult in enumerate(config.ch_mult):
        level_channels += [(config.ch * mult, level)] * config.num_res_blocks
        if resolution in config.attn_resolutions:
            attention_levels.append(level)
        if level != levels - 1:
            level_channels.append((config.ch * mult, level + 1))
            resolution //= 2
    attention_levels.append(levels - 1)
    spec = SDESpec(sde_type="vp_discrete", timesteps=config.num_diffusion_timesteps, beta_min=config.beta_start,
                   beta_max=config.beta_end)
    notes.append(f"var_type {config.var_type} (the service's samplers use their own variances); dropout {config.dropout:g} (inactive)")
    architecture = (f"SDEdit reference DDPM UNet (training/reference_unet.py): ch {config.ch}, ch_mult {list(config.ch_mult)}, "
                    f"{config.num_res_blocks} res blocks, attention at {list(config.attn_resolutions)}, "
                    f"resamp_with_conv {config.resamp_with_conv}")
    return Network(
        module=model.eval(), spec=spec, convention={"time_input": "index", "network_output": "eps", "data_range": "-1,1"},
        channels=config.in_channels, resolution=config.resolution, size_multiple=config.size_multiple,
        architecture=architecture, source=f"reference checkpoint {checkpoint.resolve()} with {config_path.name}",
        parameters=count_parameters(model), level_channels=level_channels, attention_levels=sorted(set(attention_levels)),
        notes=notes,
    )


def import_reference(checkpoint: Path, config_path: Path, options: ImportOptions) -> Path:
    network = load_network(checkpoint, config_path)
    return write_imported(network, options, content_digest(checkpoint))
