"""The DDPM UNet of the SDEdit reference code (ermongroup/SDEdit models/diffusion.py, the
`Model` of Ho et al.'s DDPM as ported by the DDIM authors), written for this project.

Its state dicts load here with strict key matching: the module tree below has the reference
layout (temb.dense.{0,1}, conv_in, down.{i}.block.{j} / .attn.{j} / .downsample.conv,
mid.block_1 / attn_1 / block_2, up.{i}.block.{j} / .attn.{j} / .upsample.conv, norm_out,
conv_out; residual blocks norm1 conv1 temb_proj norm2 conv2 and nin_shortcut or
conv_shortcut; attention norm q k v proj_out as 1x1 convolutions). The arithmetic:

- the sinusoidal timestep embedding of DDPM: half = ch / 2 frequencies
  exp(-log(10000) k / (half - 1)), [sin, cos] of t times them; then Linear, swish, Linear;
- GroupNorm(32, eps 1e-6) and swish before every convolution of a residual block; the
  embedding, through swish and a Linear, added after the first convolution;
- single-head self-attention over all positions, scaled by 1/sqrt(C), with a residual;
- downsampling: a 3x3 stride-2 convolution after padding one zero row and column at the
  bottom and right (or 2x2 average pooling); upsampling: nearest x2, then a 3x3 convolution;
- up level i takes num_res_blocks + 1 skip tensors, popped from the down path's stack.

Unlike the reference, forward does not insist on the training resolution: any size that is a
multiple of 2^(levels - 1) runs (attention stays on the levels the config names, by level).
Dropout is kept for strict loading and is inactive in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ReferenceConfig:
    """configs/*.yml of the reference: model.* and data.image_size."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    in_channels: int = 3
    resolution: int = 256
    resamp_with_conv: bool = True
    # diffusion.*: the schedule the network was trained with
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000
    beta_schedule: str = "linear"
    var_type: str = "fixedsmall"
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_yaml_dict(cls, raw: dict) -> ReferenceConfig:
        model, data, diffusion = raw.get("model", {}), raw.get("data", {}), raw.get("diffusion", {})
        missing = [key for key in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions") if key not in model]
        if missing:
            raise ValueError(f"the config's model section lacks {', '.join(missing)}")
        return cls(
            ch=int(model["ch"]), out_ch=int(model.get("out_ch", 3)), ch_mult=tuple(int(m) for m in model["ch_mult"]),
            num_res_blocks=int(model["num_res_blocks"]), attn_resolutions=tuple(int(r) for r in model["attn_resolutions"]),
            dropout=float(model.get("dropout", 0.0)), in_channels=int(model.get("in_channels", 3)),
            resolution=int(data.get("image_size", 256)), resamp_with_conv=bool(model.get("resamp_with_conv", True)),
            beta_start=float(diffusion.get("beta_start", 1e-4)), beta_end=float(diffusion.get("beta_end", 0.02)),
            num_diffusion_timesteps=int(diffusion.get("num_diffusion_timesteps", 1000)),
            beta_schedule=str(diffusion.get("beta_schedule", "linear")), var_type=str(model.get("var_type", "fixedsmall")),
        )

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DDPM's sinusoidal embedding of float timesteps t [B] -> [B, dim] (t is never rounded)."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1)))
    angles = t.to(torch.float32)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, 1)) if dim % 2 else embedding


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q = self.q(normed).flatten(2).transpose(1, 2)  # [B, HW, C]
        k = self.k(normed).flatten(2)  # [B, C, HW]
        v = self.v(normed).flatten(2).transpose(1, 2)  # [B, HW, C]
        weights = torch.softmax(torch.bmm(q, k) * (c ** -0.5), dim=-1)  # [B, HW(query), HW(key)]
        attended = torch.bmm(weights, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class _Level(nn.Module):
    """One resolution of the down or up path: block.{j}, attn.{j}, and its resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class ReferenceUNet(nn.Module):
    """eps(x, t) with t the DDPM index (a float), in the reference's parameter layout."""

    def __init__(self, config: ReferenceConfig):
        super().__init__()
        self.config = config
        ch, mults, blocks = config.ch, config.ch_mult, config.num_res_blocks
        temb_ch = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        resolution = config.resolution
        skip_channels = [ch]  # the channels of every tensor the down path pushes
        self.down = nn.ModuleList()
        current = ch
        for level, mult in enumerate(mults):
            stage = _Level()
            for _ in range(blocks):
                stage.block.append(ResnetBlock(current, ch * mult, temb_ch, config.dropout))
                current = ch * mult
                if resolution in config.attn_resolutions:
                    stage.attn.append(AttnBlock(current))
                skip_channels.append(current)
            if level != len(mults) - 1:
                stage.downsample = Downsample(current, config.resamp_with_conv)
                resolution //= 2
                skip_channels.append(current)
            self.down.append(stage)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(current, current, temb_ch, config.dropout)
        self.mid.attn_1 = AttnBlock(current)
        self.mid.block_2 = ResnetBlock(current, current, temb_ch, config.dropout)

        ups: list[_Level] = []
        for level in reversed(range(len(mults))):
            stage = _Level()
            for _ in range(blocks + 1):
                stage.block.append(ResnetBlock(current + skip_channels.pop(), ch * mults[level], temb_ch, config.dropout))
                current = ch * mults[level]
                if resolution in config.attn_resolutions:
                    stage.attn.append(AttnBlock(current))
            if level != 0:
                stage.upsample = Upsample(current, config.resamp_with_conv)
                resolution *= 2
            ups.append(stage)
        self.up = nn.ModuleList(reversed(ups))  # up[i] is level i, as in the reference's state dicts

        self.norm_out = group_norm(current)
        self.conv_out = nn.Conv2d(current, config.out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb.dense[1](swish(self.temb.dense[0](timestep_embedding(t, self.config.ch))))
        levels = len(self.config.ch_mult)
        stack = [self.conv_in(x)]
        for level, stage in enumerate(self.down):
            for j, block in enumerate(stage.block):
                h = block(stack[-1], temb)
                stack.append(stage.attn[j](h) if len(stage.attn) else h)
            if level != levels - 1:
                stack.append(stage.downsample(stack[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(stack[-1], temb)), temb)
        for level in reversed(range(levels)):
            stage = self.up[level]
            for j, block in enumerate(stage.block):
                h = block(torch.cat([h, stack.pop()], dim=1), temb)
                if len(stage.attn):
                    h = stage.attn[j](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def to_diffusers_state_dict(state: dict[str, torch.Tensor], config: ReferenceConfig) -> dict[str, torch.Tensor]:
    """The same weights under diffusers' UNet2DModel names (see diffusers_config): the
    independent implementation the tests compare this one with. Attention 1x1 convolutions
    become Linear weights; up levels are numbered from the top (diffusers) instead of the
    bottom; `nin_shortcut` is diffusers' `conv_shortcut`."""
    levels = len(config.ch_mult)
    out: dict[str, torch.Tensor] = {}

    def resnet(src: str, dst: str) -> None:
        for ours, theirs in (("norm1", "norm1"), ("conv1", "conv1"), ("temb_proj", "time_emb_proj"), ("norm2", "norm2"),
                             ("conv2", "conv2"), ("nin_shortcut", "conv_shortcut")):
            for kind in ("weight", "bias"):
                if f"{src}.{ours}.{kind}" in state:
                    out[f"{dst}.{theirs}.{kind}"] = state[f"{src}.{ours}.{kind}"]

    def attention(src: str, dst: str) -> None:
        for ours, theirs in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
            weight = state[f"{src}.{ours}.weight"]
            out[f"{dst}.{theirs}.weight"] = weight.reshape(weight.shape[0], -1) if weight.ndim == 4 else weight
            out[f"{dst}.{theirs}.bias"] = state[f"{src}.{ours}.bias"]

    for i, name in ((0, "linear_1"), (1, "linear_2")):
        for kind in ("weight", "bias"):
            out[f"time_embedding.{name}.{kind}"] = state[f"temb.dense.{i}.{kind}"]
    for ours, theirs in (("conv_in", "conv_in"), ("norm_out", "conv_norm_out"), ("conv_out", "conv_out")):
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = state[f"{ours}.{kind}"]
    for i in range(levels):
        for j in range(config.num_res_blocks):
            resnet(f"down.{i}.block.{j}", f"down_blocks.{i}.resnets.{j}")
            if f"down.{i}.attn.{j}.q.weight" in state:
                attention(f"down.{i}.attn.{j}", f"down_blocks.{i}.attentions.{j}")
        if f"down.{i}.downsample.conv.weight" in state:
            for kind in ("weight", "bias"):
                out[f"down_blocks.{i}.downsamplers.0.conv.{kind}"] = state[f"down.{i}.downsample.conv.{kind}"]
        top = levels - 1 - i  # diffusers numbers the up path from the lowest resolution
        for j in range(config.num_res_blocks + 1):
            resnet(f"up.{i}.block.{j}", f"up_blocks.{top}.resnets.{j}")
            if f"up.{i}.attn.{j}.q.weight" in state:
                attention(f"up.{i}.attn.{j}", f"up_blocks.{top}.attentions.{j}")
        if f"up.{i}.upsample.conv.weight" in state:
            for kind in ("weight", "bias"):
                out[f"up_blocks.{top}.upsamplers.0.conv.{kind}"] = state[f"up.{i}.upsample.conv.{kind}"]
    resnet("mid.block_1", "mid_block.resnets.0")
    attention("mid.attn_1", "mid_block.attentions.0")
    resnet("mid.block_2", "mid_block.resnets.1")
    return out


def diffusers_config(config: ReferenceConfig) -> dict:
    """The UNet2DModel config of the same architecture (as google/ddpm-*-256 declare it)."""
    resolution, down, up = config.resolution, [], []
    for _ in config.ch_mult:
        down.append("AttnDownBlock2D" if resolution in config.attn_resolutions else "DownBlock2D")
        resolution //= 2
    up = ["AttnUpBlock2D" if block == "AttnDownBlock2D" else "UpBlock2D" for block in reversed(down)]
    return dict(
        sample_size=config.resolution, in_channels=config.in_channels, out_channels=config.out_ch,
        layers_per_block=config.num_res_blocks, block_out_channels=tuple(config.ch * m for m in config.ch_mult),
        down_block_types=tuple(down), up_block_types=tuple(up), norm_eps=1e-6, norm_num_groups=32,
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None, act_fn="silu",
        time_embedding_type="positional", center_input_sample=False, mid_block_scale_factor=1,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
