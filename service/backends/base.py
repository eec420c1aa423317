"""The one interface the engine and the service use to reach a score network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from service.backends.conventions import DEFAULT_TIME_INPUT, NetworkConvention
from service.sde.schedules import SDESpec


@dataclass(frozen=True)
class ModelInfo:
    """What a model is, read from its config.pbtxt and its files."""

    name: str
    content_hash: str  # sha256 hex of the weights and the SDE metadata
    sde: SDESpec
    width: int
    height: int
    channels: int
    default_steps: int  # network calls per repeat of an edit with steps = 0
    flexible_size: bool = False  # accepts other sizes, multiples of size_multiple
    size_multiple: int = 1
    max_width: int = 0  # the largest accepted size (flexible models); 0 = the native size
    max_height: int = 0
    memory_bytes_per_pixel: float = 2048.0  # network working memory per input pixel per image
    attention_downsample: int = 0  # self-attention at 1/d of the side; 0 = none
    attention_bytes_per_entry: float = 0.0  # per attention-matrix entry per image
    max_batch_size: int = 0
    description: str = ""
    input_names: tuple[str, str] = ("x", "t")
    output_name: str = "eps"
    parameters: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"  # arithmetic the backend runs the network in (fp32, fp16, ...): part of the cache key

    default_sampler: str = "dpmpp_2m_sde"  # of an edit that names none (samplers.SAMPLERS)
    default_spacing: str = "logsnr_uniform"  # of an edit that names none (schedules.SPACINGS)
    convention: NetworkConvention | None = None  # the network's time input and output (None: the SDE's default)

    @property
    def network(self) -> NetworkConvention:
        """How the backends call the network and read its output (conventions.py)."""
        return self.convention or NetworkConvention(self.sde, DEFAULT_TIME_INPUT[self.sde.sde_type])

    @property
    def largest_size(self) -> tuple[int, int]:
        return (self.max_width or self.width, self.max_height or self.height)

    def accepts_size(self, width: int, height: int) -> bool:
        if (width, height) == (self.width, self.height):
            return True
        max_width, max_height = self.largest_size
        return (self.flexible_size and width % self.size_multiple == 0 and height % self.size_multiple == 0
                and width <= max_width and height <= max_height)


@runtime_checkable
class ScoreModel(Protocol):
    info: ModelInfo

    def predict_eps(self, x: np.ndarray, t: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """x: float32 [B, C, H, W] at the noise level of t; t: float32 [B]. Returns eps like x.

        deadline: time.monotonic() value by which the edit must end; a remote backend bounds
        its call by it (DeadlineExceeded). Raises BackendError when the network cannot be reached.
        """

    def ready(self) -> bool:
        """Whether predict_eps can be served now (cheap; used by health checks)."""

    def close(self) -> None:
        """Releases the backend's resources."""
