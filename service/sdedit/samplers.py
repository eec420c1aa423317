"""Samplers: one reverse step from level s to a lower level r, all with the same contract.

Every sampler is a pure function of (x, eps, s, r, noise): it returns the sample at level r
and the predicted clean sample. Randomness comes in as `noise` (standard normal, the shape
of x), drawn by the caller from a seeded generator; a sampler never draws its own.

Symbols (for a step s -> r of a schedule with x_k = alpha_k x_0 + sigma_k eps):
  alpha_s, sigma_s      the current level;   alpha_r, sigma_r   the target level
  alpha_sr = alpha_s / alpha_r               how much of x_r survives in x_s
  var_sr = sigma_s^2 - alpha_sr^2 sigma_r^2  the variance added from r to s (beta_i for one
                                             DDPM step, sigma_s^2 - sigma_r^2 for VE)
  pred_original_sample = (x - sigma_s eps) / alpha_s   (Tweedie's estimate of x_0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.sdedit.schedules import NoiseSchedule


@dataclass(frozen=True)
class StepOutput:
    prev_sample: np.ndarray
    pred_original_sample: np.ndarray


@dataclass(frozen=True)
class StepCoefficients:
    alpha_s: float
    sigma_s: float
    alpha_r: float
    sigma_r: float

    @property
    def alpha_sr(self) -> float:
        return self.alpha_s / self.alpha_r

    @property
    def var_sr(self) -> float:
        return max(self.sigma_s**2 - self.alpha_sr**2 * self.sigma_r**2, 0.0)

    @property
    def posterior_var(self) -> float:
        """Variance of q(x_r | x_s, x_0): DDPM's "fixedsmall" beta-tilde."""
        return self.var_sr * self.sigma_r**2 / self.sigma_s**2


def coefficients(schedule: NoiseSchedule, s: int, r: int) -> StepCoefficients:
    if not 0 <= r < s <= schedule.num_levels:
        raise ValueError(f"a step goes from a level to a lower one, got {s} -> {r}")
    return StepCoefficients(
        alpha_s=float(schedule.alphas[s]),
        sigma_s=float(schedule.sigmas[s]),
        alpha_r=float(schedule.alphas[r]),
        sigma_r=float(schedule.sigmas[r]),
    )


def predict_original(x: np.ndarray, eps: np.ndarray, c: StepCoefficients) -> np.ndarray:
    return ((x - c.sigma_s * eps) / c.alpha_s).astype(np.float32)


class Sampler(Protocol):
    name: str

    def needs_noise(self, r: int) -> bool:
        """Whether the step to level r consumes a noise draw."""

    def step(self, x: np.ndarray, eps: np.ndarray, c: StepCoefficients, noise: np.ndarray | None) -> StepOutput:
        """One reverse step; `noise` is None exactly when needs_noise(r) is False."""


class DDPMSampler:
    """Ancestral sampling with the posterior variance (reference SDEdit, "fixedsmall").

    For one DDPM step i -> i - 1 this is the reference update
        x <- (x - beta_i / sqrt(1 - abar_i) eps) / sqrt(alpha_i) + sqrt(betatilde_i) z,
    written for any pair of levels so that strided schedules use the same code.
    """

    name = "ddpm"

    def needs_noise(self, r: int) -> bool:
        return r > 0

    def step(self, x, eps, c, noise):
        pred_original_sample = predict_original(x, eps, c)
        mean = (x - (c.var_sr / c.sigma_s) * eps) / c.alpha_sr
        if noise is not None:
            mean = mean + np.sqrt(c.posterior_var) * noise
        return StepOutput(mean.astype(np.float32), pred_original_sample)


class DDIMSampler:
    """DDIM (Song, Meng & Ermon 2020): x_r = alpha_r x0 + sqrt(sigma_r^2 - s^2) eps + s z,
    with s = eta * (DDPM posterior std). eta = 0 is deterministic."""

    name = "ddim"

    def __init__(self, eta: float = 0.0):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.eta = eta

    def needs_noise(self, r: int) -> bool:
        return r > 0 and self.eta > 0

    def step(self, x, eps, c, noise):
        pred_original_sample = predict_original(x, eps, c)
        std = self.eta * np.sqrt(c.posterior_var)
        direction = np.sqrt(max(c.sigma_r**2 - std**2, 0.0))
        prev = c.alpha_r * pred_original_sample + direction * eps
        if noise is not None:
            prev = prev + std * noise
        return StepOutput(prev.astype(np.float32), pred_original_sample)


class EulerMaruyamaSampler:
    """Euler-Maruyama on the reverse SDE, the paper's Algorithm 1 for VE:
        x <- x + (sigma_s^2 - sigma_r^2) score + sqrt(sigma_s^2 - sigma_r^2) z,
    and for VP the discretised reverse diffusion (2 - sqrt(1 - beta)) x + beta score + sqrt(beta) z.
    In general: x_r = (2 - alpha_sr) x + var_sr score + sqrt(var_sr) z, score = -eps / sigma_s.
    The last step (to the clean level) adds no noise.
    """

    name = "euler_maruyama"

    def needs_noise(self, r: int) -> bool:
        return r > 0

    def step(self, x, eps, c, noise):
        pred_original_sample = predict_original(x, eps, c)
        score = -eps / c.sigma_s
        prev = (2.0 - c.alpha_sr) * x + c.var_sr * score
        if noise is not None:
            prev = prev + np.sqrt(c.var_sr) * noise
        return StepOutput(prev.astype(np.float32), pred_original_sample)


SAMPLERS = ("ddpm", "ddim", "euler_maruyama")


def get_sampler(name: str, eta: float = 0.0) -> Sampler:
    if name == "ddpm":
        return DDPMSampler()
    if name == "ddim":
        return DDIMSampler(eta)
    if name == "euler_maruyama":
        return EulerMaruyamaSampler()
    raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")


def reference_sampler(sde_type: str) -> str:
    """The sampler the paper and the reference code use for this SDE."""
    return "euler_maruyama" if sde_type == "ve" else "ddpm"
