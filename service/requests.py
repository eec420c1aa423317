"""Plain request and result types: what the transport hands the service and gets back, and
what the cache and the jobs keep. Every layer above the math shares them, so they sit below
all of those layers.

No protobuf here: service/transport/grpc/convert.py maps messages to and from these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.backends.base import ModelInfo
from service.sde import EditParams, Progress


@dataclass(frozen=True)
class EditRequestData:
    image: bytes
    t0: float
    model: str = ""
    mask: bytes = b""
    steps: int = 0  # 0 = the model's default_steps
    repeats: int = 0  # 0 = 1
    sampler: str = ""  # "" = the model's default sampler (reference sampler with full_schedule)
    eta: float = 0.0
    seed: int | None = None
    num_samples: int = 0  # 0 = 1
    output_format: str = "png"  # "png" | "npy"
    preview_every: int = 0
    request_id: str = ""
    spacing: str = ""  # "" = the model's default spacing
    full_schedule: bool = False  # every level from t0 down (steps must be 0)


@dataclass(frozen=True)
class EditJob:
    """A validated, decoded request: everything the loop needs."""

    request: EditRequestData
    model_name: str
    pixels: np.ndarray  # uint8 [H, W, C]
    guide: np.ndarray  # float32 [C, H, W]
    mask: np.ndarray | None  # float32 [H, W], 1 = regenerate
    params: EditParams
    levels: np.ndarray  # the plan's levels (one repeat)
    seeds: tuple[int, ...]
    output_format: str
    decode_seconds: float


@dataclass(frozen=True)
class OutputImage:
    data: bytes
    media_type: str
    seed: int


@dataclass
class StageTimings:
    queue_seconds: float = 0.0
    decode_seconds: float = 0.0
    sde_seconds: float = 0.0
    network_seconds: float = 0.0
    encode_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass
class EditOutcome:
    images: list[OutputImage]
    network_calls: int
    model: ModelInfo
    steps: int
    repeats: int
    sampler: str
    spacing: str = "time_uniform"
    timings: StageTimings = field(default_factory=StageTimings)
    cached: bool = False
    request_id: str = ""


@dataclass(frozen=True)
class ProgressUpdate:
    """A step of a running edit, as a stream reader gets it."""

    progress: Progress
    previews: tuple[bytes, ...] = ()  # PNG per sample, on preview steps only
