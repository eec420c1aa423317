"""Noise schedules as pure functions returning arrays.

Three SDEs, each reduced to the same table of levels (alpha_k, sigma_k, model time t_k):

- ``vp_discrete``: DDPM (Ho et al.), the reference SDEdit setting. betas linear from
  beta_min to beta_max over T steps, abar_i = prod(1 - beta_1..i). Level k = DDPM index
  i = k - 1, alpha = sqrt(abar_i), sigma = sqrt(1 - abar_i); the network is called with
  the integer index i as a float.
- ``vp``: the continuous VP-SDE, beta(t) = beta_min + t (beta_max - beta_min), t in (0, 1],
  alpha(t) = exp(-1/2 int_0^t beta), sigma = sqrt(1 - alpha^2). Level k is t = k / N; the
  network is called with t.
- ``ve``: the VE-SDE (SMLD / NCSN), sigma(t) = sigma_min (sigma_max / sigma_min)^t,
  alpha = 1. Level k is t = k / N; the network is called with t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SDE_TYPES = ("vp_discrete", "vp", "ve")
# How the network's levels are spread between the start level n0 and level 1 (see plan_levels).
SPACINGS = ("time_uniform", "logsnr_uniform", "karras")
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5


@dataclass(frozen=True)
class SDESpec:
    """What a score network was trained for; read from the model's configuration."""

    sde_type: str = "vp_discrete"
    timesteps: int = 1000
    beta_min: float = 1e-4  # vp_discrete: beta_1; vp: beta(0)
    beta_max: float = 0.02  # vp_discrete: beta_T; vp: beta(1)
    sigma_min: float = 0.01  # ve only
    sigma_max: float = 50.0  # ve only
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.sde_type not in SDE_TYPES:
            raise ValueError(f"sde_type must be one of {SDE_TYPES}, got {self.sde_type!r}")
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        if self.prediction_type != "epsilon":
            raise ValueError(f"only epsilon prediction is supported, got {self.prediction_type!r}")
        if self.sde_type == "ve" and not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("ve needs 0 < sigma_min < sigma_max")
        if self.sde_type != "ve" and not 0 < self.beta_min < self.beta_max:
            raise ValueError("vp needs 0 < beta_min < beta_max")


@dataclass(frozen=True)
class NoiseSchedule:
    """Levels 0..N: x_k = alphas[k] x_0 + sigmas[k] eps; the network is called with model_times[k]."""

    alphas: np.ndarray  # float64 [N + 1], alphas[0] = 1
    sigmas: np.ndarray  # float64 [N + 1], sigmas[0] = 0
    model_times: np.ndarray  # float32 [N + 1]; model_times[0] is never used

    @property
    def num_levels(self) -> int:
        return len(self.alphas) - 1

    @property
    def log_snrs(self) -> np.ndarray:
        """lambda_k = log(alpha_k / sigma_k), falling with k; +inf at the clean level 0."""
        with np.errstate(divide="ignore"):
            return np.log(self.alphas) - np.log(self.sigmas)


def linear_betas(timesteps: int, beta_min: float, beta_max: float) -> np.ndarray:
    return np.linspace(beta_min, beta_max, timesteps, dtype=np.float64)


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - betas)


def vp_log_alpha(t: np.ndarray, beta_min: float, beta_max: float) -> np.ndarray:
    """log alpha(t) of the continuous VP-SDE: -1/2 int_0^t beta(s) ds."""
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def ve_sigma(t: np.ndarray, sigma_min: float, sigma_max: float) -> np.ndarray:
    return sigma_min * (sigma_max / sigma_min) ** t


def continuous_times(levels: int) -> np.ndarray:
    """t_k = k / N for k = 0..N."""
    return np.arange(levels + 1, dtype=np.float64) / levels


def build_schedule(spec: SDESpec) -> NoiseSchedule:
    n = spec.timesteps
    if spec.sde_type == "vp_discrete":
        abar = alphas_cumprod(linear_betas(n, spec.beta_min, spec.beta_max))
        alphas = np.concatenate([[1.0], np.sqrt(abar)])
        sigmas = np.concatenate([[0.0], np.sqrt(1.0 - abar)])
        model_times = np.arange(-1, n, dtype=np.float32)  # level k -> DDPM index k - 1
    elif spec.sde_type == "vp":
        t = continuous_times(n)
        log_alpha = vp_log_alpha(t, spec.beta_min, spec.beta_max)
        alphas = np.exp(log_alpha)
        sigmas = np.sqrt(-np.expm1(2.0 * log_alpha))
        model_times = t.astype(np.float32)
    else:  # ve
        t = continuous_times(n)
        alphas = np.ones(n + 1)
        sigmas = ve_sigma(t, spec.sigma_min, spec.sigma_max)
        sigmas[0] = 0.0  # the last step lands on the clean image
        model_times = t.astype(np.float32)
    return NoiseSchedule(alphas=alphas, sigmas=sigmas, model_times=model_times)


def start_level(t0: float, num_levels: int) -> int:
    """The level the guide is noised to: round(t0 * N), at least 1 (reference: n0 = t0 * T)."""
    return max(1, min(num_levels, int(np.floor(t0 * num_levels + 0.5))))


def strided_levels(n0: int, steps: int) -> np.ndarray:
    """`steps` distinct levels from n0 down to 1, evenly spaced; steps = n0 gives every level.

    The network is called once at each returned level; the sampler then jumps to the next
    one, and from the last to level 0.
    """
    if not 1 <= steps <= n0:
        raise ValueError(f"steps must be in [1, {n0}], got {steps}")
    if steps == 1:
        return np.array([n0], dtype=np.int64)
    # spacing >= 1 and round-half-up keep the levels distinct
    return np.floor(np.linspace(n0, 1, steps) + 0.5).astype(np.int64)


def nearest_levels(log_snrs: np.ndarray, targets: np.ndarray, n0: int) -> np.ndarray:
    """The integer levels in [1, n0] whose logSNR is nearest each target (targets falling),
    made strictly decreasing from n0 down to 1 with as little change as possible.

    Levels stay integers on purpose: a vp_discrete network is called with the DDPM index, and
    its exact alphas and sigmas are the ones the sampler uses (no interpolated model times).
    """
    lam = log_snrs[1:n0 + 1]  # lam[j] is level j + 1, decreasing in j
    ascending = lam[::-1]
    upper = np.clip(np.searchsorted(ascending, targets), 1, len(ascending) - 1) if n0 > 1 else np.zeros(len(targets), int)
    lower = np.maximum(upper - 1, 0)
    pick = np.where(np.abs(ascending[upper] - targets) < np.abs(ascending[lower] - targets), upper, lower)
    steps = len(targets)
    index = np.arange(steps)
    # leave room: the i-th of `steps` strictly decreasing levels in [1, n0] lies in [steps - i, n0 - i]
    levels = np.clip(n0 - pick, steps - index, n0 - index)
    levels[0], levels[-1] = n0, 1
    for i in range(1, steps):  # strictly decreasing; stays within the bounds above
        levels[i] = min(levels[i], levels[i - 1] - 1)
    return levels.astype(np.int64)


def logsnr_targets(lambda_start: float, lambda_end: float, steps: int, spacing: str) -> np.ndarray:
    """`steps` logSNR values from the start level's to level 1's: uniform in lambda, or
    Karras' rho-spacing of sigma / alpha = exp(-lambda)."""
    if spacing == "logsnr_uniform":
        return np.linspace(lambda_start, lambda_end, steps)
    ramp = np.linspace(0.0, 1.0, steps)
    s_max, s_min = np.exp(-lambda_start / KARRAS_RHO), np.exp(-lambda_end / KARRAS_RHO)
    return -KARRAS_RHO * np.log(s_max + ramp * (s_min - s_max))


def plan_levels(schedule: NoiseSchedule, n0: int, steps: int, spacing: str = "time_uniform") -> np.ndarray:
    """The `steps` levels the network is called at, from n0 down to 1 (steps = n0: every level).

    time_uniform: evenly spaced levels (the reference strided schedule). logsnr_uniform: the
    levels nearest evenly spaced logSNR lambda = log(alpha / sigma), which is what
    DPM-Solver's error analysis assumes (for VE, lambda = -log sigma is linear in t, so this
    equals time_uniform). karras: nearest Karras et al.'s sigma spacing (rho = 7).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    levels = strided_levels(n0, steps)
    if spacing == "time_uniform" or steps <= 2:
        return levels
    lam = schedule.log_snrs
    return nearest_levels(lam, logsnr_targets(float(lam[n0]), float(lam[1]), steps, spacing), n0)
