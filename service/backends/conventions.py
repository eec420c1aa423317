"""What a score network takes as time and gives back, per model family: one conversion for
both backends, applied to t before the call and to the output after it.

The engine calls every model with its schedule's model time (schedules.build_schedule):
the DDPM index for vp_discrete, t = k / N in (0, 1] for vp and ve, and expects eps. Real
checkpoints are called otherwise; a model declares how in its config.pbtxt parameters:

    time_input      index  the DDPM index as a float (vp_discrete's default)
                    t      t in (0, 1] (the default of vp and ve: the project's own oracles)
                    999t   999 t (score_sde's continuous VP models: labels = 999 t)
                    sigma  the VE noise level sigma(t) (NCSN++, diffusers' ScoreSdeVe UNets)
    network_output  eps    the noise (default)
                    score  the score, grad log p = -eps / sigma  (eps = -sigma x score)
    data_range      -1,1   the data the network was trained on (default)
                    0,1    (ve only) images in [0, 1], as score_sde's uncentred NCSN++ models:
                           the network sees x' = (x + 1) / 2 = x0' + (sigma / 2) eps, so it is
                           called at sigma' = sigma / 2 and its score is in x' units. The
                           config's sigma_min/max are in the service's [-1, 1] units (twice
                           the network's).

Fractional times pass through untouched (float32, no rounding): few-step samplers and the
continuous SDEs call the network between integer indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.sde.schedules import SDESpec, alphas_cumprod, linear_betas, ve_sigma, vp_log_alpha

TIME_INPUTS = ("index", "t", "999t", "sigma")
NETWORK_OUTPUTS = ("eps", "score")
DATA_RANGES = ("-1,1", "0,1")
DEFAULT_TIME_INPUT = {"vp_discrete": "index", "vp": "t", "ve": "t"}


@dataclass(frozen=True)
class NetworkConvention:
    """How the engine's (x, model time) becomes the network's input, and its output eps."""

    spec: SDESpec
    time_input: str
    network_output: str = "eps"
    data_range: str = "-1,1"

    def __post_init__(self) -> None:
        if self.time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {', '.join(TIME_INPUTS)}, got {self.time_input!r}")
        if self.network_output not in NETWORK_OUTPUTS:
            raise ValueError(f"network_output must be one of {', '.join(NETWORK_OUTPUTS)}, got {self.network_output!r}")
        if self.data_range not in DATA_RANGES:
            raise ValueError(f"data_range must be one of {', '.join(DATA_RANGES)}, got {self.data_range!r}")
        allowed = {"vp_discrete": ("index",), "vp": ("t", "999t"), "ve": ("t", "sigma")}[self.spec.sde_type]
        if self.time_input not in allowed:
            raise ValueError(f"time_input {self.time_input!r} does not fit sde {self.spec.sde_type} (use {' or '.join(allowed)})")
        if self.data_range != "-1,1" and self.spec.sde_type != "ve":
            raise ValueError("data_range 0,1 is only exact for ve (alpha = 1): VP levels do not map onto [0, 1] data")

    @property
    def is_identity(self) -> bool:
        return (self.time_input == DEFAULT_TIME_INPUT[self.spec.sde_type] and self.network_output == "eps"
                and self.data_range == "-1,1")

    @property
    def _scale(self) -> float:
        """The network's data units per service unit: 1/2 for [0, 1] data."""
        return 0.5 if self.data_range == "0,1" else 1.0

    def sigma(self, t: np.ndarray) -> np.ndarray:
        """The service's noise level sigma at model time t (float64)."""
        spec, t = self.spec, np.asarray(t, dtype=np.float64)
        if spec.sde_type == "ve":
            return ve_sigma(t, spec.sigma_min, spec.sigma_max)
        if spec.sde_type == "vp":
            return np.sqrt(-np.expm1(2.0 * vp_log_alpha(t, spec.beta_min, spec.beta_max)))
        abar = alphas_cumprod(linear_betas(spec.timesteps, spec.beta_min, spec.beta_max))
        return np.sqrt(1.0 - np.interp(t, np.arange(spec.timesteps), abar))

    def network_inputs(self, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, t) as the network takes them, float32."""
        if self.is_identity:
            return x, t
        if self.data_range == "0,1":
            x = (x + 1.0) * 0.5
        if self.time_input == "sigma":
            t = self.sigma(t) * self._scale
        elif self.time_input == "999t":
            t = 999.0 * np.asarray(t, dtype=np.float64)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(t, dtype=np.float32)

    def eps(self, output: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The network's output as eps (t: the engine's model time, as given to network_inputs)."""
        if self.network_output == "eps":
            return output
        sigma = (self.sigma(t) * self._scale).reshape(-1, *([1] * (output.ndim - 1)))
        return (-sigma * output).astype(np.float32)


def convention_from_parameters(params: dict[str, str], spec: SDESpec) -> NetworkConvention:
    """The declared convention (defaults: the project's own, so shipped models keep working)."""
    return NetworkConvention(
        spec=spec,
        time_input=params.get("time_input", DEFAULT_TIME_INPUT[spec.sde_type]),
        network_output=params.get("network_output", "eps"),
        data_range=params.get("data_range", "-1,1"),
    )


def convention_parameters(convention: NetworkConvention) -> dict[str, str]:
    return {"time_input": convention.time_input, "network_output": convention.network_output,
            "data_range": convention.data_range}
