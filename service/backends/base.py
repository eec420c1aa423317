"""The one interface the engine and the service use to reach a score network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from service.sdedit.schedules import SDESpec


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
    max_batch_size: int = 0
    description: str = ""
    input_names: tuple[str, str] = ("x", "t")
    output_name: str = "eps"
    parameters: dict[str, str] = field(default_factory=dict)
    default_sampler: str = "dpmpp_2m_sde"  # of an edit that names none (samplers.SAMPLERS)
    default_spacing: str = "logsnr_uniform"  # of an edit that names none (schedules.SPACINGS)

    def accepts_size(self, width: int, height: int) -> bool:
        if (width, height) == (self.width, self.height):
            return True
        return self.flexible_size and width % self.size_multiple == 0 and height % self.size_multiple == 0


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
