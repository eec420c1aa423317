"""Samplers: one reverse step from level s to a lower level r, all with the same contract.

Every sampler is a pure function of (x, eps, s -> r, noise, state): it returns the sample at
level r, the predicted clean sample and its new state. Randomness comes in as `noise`
(standard normal, the shape of x), drawn by the caller from a seeded generator; a sampler
never draws its own. `state` is a multistep sampler's memory of the trajectory (the previous
level's data prediction): plain data that the caller keeps per edit and per repeat, starts
at INITIAL_STATE, and passes back in; a sampler object holds no per-edit state, so one
instance serves any number of edits, batched or not. Single-step samplers return it as is.

Symbols (for a step s -> r of a schedule with x_k = alpha_k x_0 + sigma_k eps):
  alpha_s, sigma_s      the current level;   alpha_r, sigma_r   the target level
  alpha_sr = alpha_s / alpha_r               how much of x_r survives in x_s
  var_sr = sigma_s^2 - alpha_sr^2 sigma_r^2  the variance added from r to s (beta_i for one
                                             DDPM step, sigma_s^2 - sigma_r^2 for VE)
  pred_original_sample = (x - sigma_s eps) / alpha_s   (Tweedie's estimate of x_0)
  lambda_s = log(alpha_s / sigma_s)          the logSNR (DPM-Solver's lambda); +inf at level 0
  h = lambda_r - lambda_s                    the step in logSNR (> 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.sde.schedules import NoiseSchedule


@dataclass(frozen=True)
class SamplerState:
    """A multistep sampler's memory of one trajectory: the data prediction at the previous
    network level and that level's logSNR. Empty at the start of every repeat."""

    pred_original_sample: np.ndarray | None = None  # D at the previous level, like x
    log_snr: float = math.nan  # lambda at the previous level


INITIAL_STATE = SamplerState()


@dataclass(frozen=True)
class StepOutput:
    prev_sample: np.ndarray
    pred_original_sample: np.ndarray
    state: SamplerState = INITIAL_STATE


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

    @property
    def lambda_s(self) -> float:
        return math.log(self.alpha_s / self.sigma_s)

    @property
    def lambda_r(self) -> float:
        return math.inf if self.sigma_r == 0.0 else math.log(self.alpha_r / self.sigma_r)


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
    """(x - sigma_s eps) / alpha_s: the same float32 operations in one buffer (fewer passes)."""
    out = np.multiply(eps, c.sigma_s, dtype=np.float32)
    np.subtract(x, out, out=out)
    np.divide(out, c.alpha_s, out=out)
    return out


class Sampler(Protocol):
    name: str

    def needs_noise(self, r: int) -> bool:
        """Whether the step to level r consumes a noise draw."""

    def step(self, x: np.ndarray, eps: np.ndarray, c: StepCoefficients, noise: np.ndarray | None,
             state: SamplerState = INITIAL_STATE) -> StepOutput:
        """One reverse step; `noise` is None exactly when needs_noise(r) is False; `state` is
        what the previous step of this trajectory returned (INITIAL_STATE on its first step)."""


class DDPMSampler:
    """Ancestral sampling with the posterior variance (reference SDEdit, "fixedsmall").

    For one DDPM step i -> i - 1 this is the reference update
        x <- (x - beta_i / sqrt(1 - abar_i) eps) / sqrt(alpha_i) + sqrt(betatilde_i) z,
    written for any pair of levels so that strided schedules use the same code.
    """

    name = "ddpm"

    def needs_noise(self, r: int) -> bool:
        return r > 0

    def step(self, x, eps, c, noise, state=INITIAL_STATE):
        pred_original_sample = predict_original(x, eps, c)
        mean = (x - (c.var_sr / c.sigma_s) * eps) / c.alpha_sr
        if noise is not None:
            mean = mean + np.sqrt(c.posterior_var) * noise
        return StepOutput(mean.astype(np.float32, copy=False), pred_original_sample, state)


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

    def step(self, x, eps, c, noise, state=INITIAL_STATE):
        pred_original_sample = predict_original(x, eps, c)
        std = self.eta * np.sqrt(c.posterior_var)
        direction = np.sqrt(max(c.sigma_r**2 - std**2, 0.0))
        prev = c.alpha_r * pred_original_sample + direction * eps
        if noise is not None:
            prev = prev + std * noise
        return StepOutput(prev.astype(np.float32, copy=False), pred_original_sample, state)


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

    def step(self, x, eps, c, noise, state=INITIAL_STATE):
        pred_original_sample = predict_original(x, eps, c)
        score = -eps / c.sigma_s
        prev = (2.0 - c.alpha_sr) * x + c.var_sr * score
        if noise is not None:
            prev = prev + np.sqrt(c.var_sr) * noise
        return StepOutput(prev.astype(np.float32, copy=False), pred_original_sample, state)


class DPMSolverPP2MSampler:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2), data prediction.

    Symbols: D = pred_original_sample (the paper's x_theta), D_prev and lambda_p from `state`
    (the previous network level p), h = lambda_r - lambda_s, r0 = (lambda_s - lambda_p) / h.
    deterministic (the probability-flow ODE):
        x_r = (sigma_r / sigma_s) x - alpha_r (e^-h - 1) (D + (D - D_prev) / (2 r0))
    stochastic (sde-dpmsolver++, the same paper's SDE variant, section 4 / appendix):
        x_r = (sigma_r / sigma_s) e^-h x + alpha_r (1 - e^-2h) (D + (D - D_prev) / (2 r0))
              + sigma_r sqrt(1 - e^-2h) z
    First order (D_prev unused: DDIM, resp. the DDPM posterior step) on the first step of a
    trajectory, which covers an intermediate start t0 with no history, and on the last step
    onto the clean level (h = inf there: x_0 = D). So 1 or 2 network calls are first order
    throughout, and with `steps` calls, steps - 2 are second order.
    """

    def __init__(self, stochastic: bool):
        self.stochastic = stochastic
        self.name = "dpmpp_2m_sde" if stochastic else "dpmpp_2m"

    def needs_noise(self, r: int) -> bool:
        return self.stochastic and r > 0

    def step(self, x, eps, c, noise, state=INITIAL_STATE):
        pred_original_sample = predict_original(x, eps, c)
        new_state = SamplerState(pred_original_sample, c.lambda_s)
        if c.sigma_r == 0.0:  # onto the clean level: h = inf, the update is D itself
            return StepOutput((c.alpha_r * pred_original_sample).astype(np.float32, copy=False), pred_original_sample, new_state)
        h = c.lambda_r - c.lambda_s
        # The arithmetic below is the formula above, operation for operation, in place: one
        # scratch buffer and the output instead of a temporary per operation.
        scratch = np.empty_like(pred_original_sample)
        data = pred_original_sample
        if state.pred_original_sample is not None:  # second order: the multistep correction
            r0 = (c.lambda_s - state.log_snr) / h
            np.subtract(pred_original_sample, state.pred_original_sample, out=scratch)
            np.divide(scratch, 2.0 * r0, out=scratch)
            np.add(pred_original_sample, scratch, out=scratch)
            data = scratch
        if self.stochastic:
            keep = -math.expm1(-2.0 * h)  # 1 - e^-2h
            prev = np.multiply(x, c.sigma_r / c.sigma_s * math.exp(-h), dtype=np.float32)
            np.multiply(data, c.alpha_r * keep, out=scratch)
            np.add(prev, scratch, out=prev)
            if noise is not None:
                np.multiply(noise, c.sigma_r * math.sqrt(keep), out=scratch)
                np.add(prev, scratch, out=prev)
        else:
            prev = np.multiply(x, c.sigma_r / c.sigma_s, dtype=np.float32)
            np.multiply(data, c.alpha_r * math.expm1(-h), out=scratch)
            np.subtract(prev, scratch, out=prev)
        return StepOutput(prev.astype(np.float32, copy=False), pred_original_sample, new_state)


# The one table of samplers: name -> the sampler for an eta (DDIM's; the others ignore it).
# Validation, the model configs, the API's enum mapping (service/transport/grpc/names.py), the
# client and the CLI all take their names from here.
SAMPLER_TABLE: dict[str, Callable[[float], Sampler]] = {
    "ddpm": lambda eta: DDPMSampler(),
    "ddim": DDIMSampler,
    "euler_maruyama": lambda eta: EulerMaruyamaSampler(),
    "dpmpp_2m": lambda eta: DPMSolverPP2MSampler(stochastic=False),
    "dpmpp_2m_sde": lambda eta: DPMSolverPP2MSampler(stochastic=True),
}
SAMPLERS = tuple(SAMPLER_TABLE)


def get_sampler(name: str, eta: float = 0.0) -> Sampler:
    build = SAMPLER_TABLE.get(name)
    if build is None:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return build(eta)


def reference_sampler(sde_type: str) -> str:
    """The sampler the paper and the reference code use for this SDE."""
    return "euler_maruyama" if sde_type == "ve" else "ddpm"


# Euler-Maruyama adds the forward noise of a whole step, var_sr, but contracts only by the
# drift, so at large strides its output is far too wide (VE, t0 = 1, 5 steps: variance 4.4
# where the data have 0.25). Requests are refused when, on exact-score Gaussian data with a
# per-pixel std in GAUSSIAN_CHECK_STDS (real images' range), the output variance of these
# very levels would be off by more than EULER_MARUYAMA_MAX_VARIANCE_ERROR: a closed form.
GAUSSIAN_CHECK_STDS = (0.2, 0.3, 0.5)
EULER_MARUYAMA_MAX_VARIANCE_ERROR = 0.25


def euler_maruyama_variance_error(schedule: NoiseSchedule, levels: np.ndarray) -> float:
    """max over GAUSSIAN_CHECK_STDS of |Var(EM output) / Var(exact reverse SDE) - 1|, one repeat.

    Per pixel, with V_s = alpha_s^2 s^2 + sigma_s^2, a step is x_r = a x_s + b + c z with
    a = 2 - alpha_sr - var_sr / V_s and c^2 = var_sr (0 onto level 0) (tests/ORACLE.md, sec. 2);
    the exact answer is the law of x_0 | x_n0 integrated over x_n0 given the guide.
    """
    stds = np.asarray(GAUSSIAN_CHECK_STDS)
    n0 = int(levels[0])
    alpha0, sigma0 = float(schedule.alphas[n0]), float(schedule.sigmas[n0])
    var = np.full(len(stds), sigma0**2)  # x_n0 = alpha g + sigma z, the guide fixed
    for s, r in zip(levels, np.append(levels[1:], 0)):
        c = coefficients(schedule, int(s), int(r))
        v_s = c.alpha_s**2 * stds**2 + c.sigma_s**2
        a = 2.0 - c.alpha_sr - c.var_sr / v_s
        var = a * a * var + (c.var_sr if r > 0 else 0.0)
    v0 = alpha0**2 * stds**2 + sigma0**2
    exact = (alpha0 * stds**2 / v0) ** 2 * sigma0**2 + stds**2 * sigma0**2 / v0
    return float(np.max(np.abs(var / exact - 1.0)))
