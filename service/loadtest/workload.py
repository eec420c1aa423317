"""What the load client sends: a mix of image sizes and of fixed and fresh seeds.

A "fixed" request repeats one request exactly (same image bytes, parameters and seed), so
a result cache can answer it; a "fresh" request has a new random seed, so it never can:
fresh seeds come from the system's randomness, not from the mix's seeded generator, so a
second run does not repeat the first run's requests into a warm cache.
Sizes other than the model's own are used only when the model says it accepts them
(ListModels: flexible_size, sides multiples of size_multiple).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from sdedit.v1 import sdedit_pb2 as pb
from service.client import SAMPLER_NAMES, SPACING_NAMES, build_request
from service.pipeline.imaging import encode_png

FIXED, FRESH = "fixed", "fresh"


class WorkloadError(ValueError):
    """The requested mix does not fit the model (reported before any load is sent)."""


@dataclass(frozen=True)
class RequestOptions:
    model: str = ""  # "" = the server's default model
    t0: float = 0.5
    steps: int = 0  # 0 = the model's default_steps (not the full schedule)
    sampler: str | None = None  # None = the model's default sampler
    spacing: str | None = None  # None = the model's default spacing
    num_samples: int = 1
    fixed_seed_fraction: float = 0.0  # share of requests that repeat one request exactly
    fixed_seed: int = 0
    sizes: tuple[tuple[int, int], ...] = ()  # (width, height); () = the model's own, plus twice it if flexible
    image: bytes | None = None  # a guide of the model's own size; None = a generated one


@dataclass(frozen=True)
class RequestSpec:
    request: pb.EditRequest
    size: str  # "WxH"
    seed_kind: str  # FIXED or FRESH


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise WorkloadError(f"size {text!r} is not WIDTHxHEIGHT") from None
    if width < 1 or height < 1:
        raise WorkloadError(f"size {text!r} must be positive")
    return width, height


def pick_model(models: list[pb.ModelInfo], name: str) -> pb.ModelInfo:
    for model in models:
        if (name and model.name == name) or (not name and model.is_default):
            return model
    raise WorkloadError(f"the server has no model {name!r}; it has {', '.join(m.name for m in models)}")


def plan_sizes(model: pb.ModelInfo, sizes: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    native = (model.width, model.height)
    if not sizes:
        return (native, (2 * model.width, 2 * model.height)) if model.flexible_size else (native,)
    multiple = max(model.size_multiple, 1)
    for width, height in sizes:
        if (width, height) == native:
            continue
        if not model.flexible_size:
            raise WorkloadError(f"model {model.name} takes only {model.width}x{model.height} images, not {width}x{height}")
        if width % multiple or height % multiple:
            raise WorkloadError(f"model {model.name} takes sides in multiples of {multiple}, not {width}x{height}")
    return sizes


def guide_image(width: int, height: int, channels: int) -> bytes:
    """A smooth, deterministic guide of the given size (blobs, not noise: it is a plausible image)."""
    rng = np.random.default_rng(width * 100_003 + height)
    coarse = rng.uniform(0, 255, (max(height // 8, 2), max(width // 8, 2), channels))
    rows = np.linspace(0, coarse.shape[0] - 1, height).round().astype(int)
    cols = np.linspace(0, coarse.shape[1] - 1, width).round().astype(int)
    return encode_png(coarse[rows][:, cols].astype(np.uint8))


class Workload:
    """Draws request i's size and seed kind from a seeded generator (the mix is repeatable)."""

    def __init__(self, model: pb.ModelInfo, options: RequestOptions, seed: int = 0):
        if not 0.0 <= options.fixed_seed_fraction <= 1.0:
            raise WorkloadError(f"the fixed-seed fraction must be in [0, 1], got {options.fixed_seed_fraction}")
        self.model = model
        self.options = options
        self.sizes = plan_sizes(model, options.sizes)
        self.steps = options.steps or model.default_steps
        self.sampler = options.sampler or SAMPLER_NAMES.get(model.default_sampler, "default")
        self.spacing = options.spacing or SPACING_NAMES.get(model.default_spacing, "default")
        self._rng = np.random.default_rng(seed)
        self._images = {size: guide_image(*size, model.channels) for size in self.sizes}
        if options.image is not None:
            if self.sizes != ((model.width, model.height),):
                raise WorkloadError("a given --image is used at the model's own size only; leave out --sizes")
            self._images[self.sizes[0]] = options.image

    def next(self) -> RequestSpec:
        size = self.sizes[int(self._rng.integers(len(self.sizes)))]
        fixed = bool(self._rng.random() < self.options.fixed_seed_fraction)
        seed = self.options.fixed_seed if fixed else secrets.randbits(64)
        o = self.options
        request = build_request(self._images[size], t0=o.t0, steps=self.steps, seed=seed, num_samples=o.num_samples,
                                model=self.model.name, sampler=o.sampler, spacing=o.spacing)
        return RequestSpec(request, f"{size[0]}x{size[1]}", FIXED if fixed else FRESH)
