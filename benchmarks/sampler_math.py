"""Closed-form output laws of every sampler on exact-score Gaussian data (docs/quality.md, tests/ORACLE.md).

For data N(mu, s^2) per pixel the exact eps is affine in x, so the data prediction is too:
D(x) = p_s x + q_s with p_s = alpha_s s^2 / V_s, q_s = sigma_s^2 mu / V_s, V_s = alpha_s^2 s^2 +
sigma_s^2. Every sampler step is then affine in (x, D_prev) plus independent noise:

    x_r = kx x + kD D(x) + kP D_prev + c z,

so the pair u = (x, D_prev) stays jointly Gaussian and a 2x2 covariance recursion gives the
exact law of the output of any sampler, spacing and number of calls. The coefficients are
written here from the samplers' published formulas, independently of service/sde (which
this module only uses for the schedule table and the level plan).

The exact answers (no discretisation) for a constant guide g, start level with (alpha, sigma):
- reverse SDE: x0 | x_t0, integrated over x_t0 ~ N(alpha g, sigma^2):
      mean mu + (alpha^2 s^2 / V) (g - mu),  var (alpha s^2 / V)^2 sigma^2 + s^2 sigma^2 / V;
- probability-flow ODE: x0 = mu + (s / sqrt V) (x_t0 - alpha mu):
      mean mu + (alpha s / sqrt V) (g - mu),  var s^2 sigma^2 / V.
"""

from __future__ import annotations

import math

import numpy as np

from service.sde.schedules import NoiseSchedule, plan_levels, start_level

DETERMINISTIC = ("ddim", "dpmpp_2m")  # ddim with eta = 0


def step_coefficients(sampler: str, eta: float, a_s: float, s_s: float, a_r: float, s_r: float,
                      l_p: float | None) -> tuple[float, float, float, float]:
    """(kx, kD, kP, c) of one step s -> r; l_p = the previous level's logSNR (None: no history)."""
    a_sr = a_s / a_r
    var_sr = max(s_s**2 - a_sr**2 * s_r**2, 0.0)
    post_var = var_sr * s_r**2 / s_s**2
    last = s_r == 0.0
    # eps = (x - a_s D) / s_s
    if sampler == "ddpm":  # x_r = (x - var_sr / s_s eps) / a_sr + sqrt(post_var) z
        return 1 / a_sr - var_sr / (s_s**2 * a_sr), var_sr * a_s / (s_s**2 * a_sr), 0.0, 0.0 if last else math.sqrt(post_var)
    if sampler == "ddim":  # x_r = a_r D + d eps + std z
        std = eta * math.sqrt(post_var)
        d = math.sqrt(max(s_r**2 - std**2, 0.0))
        return d / s_s, a_r - d * a_s / s_s, 0.0, 0.0 if last else std
    if sampler == "euler_maruyama":  # x_r = (2 - a_sr) x - var_sr / s_s eps + sqrt(var_sr) z
        return 2 - a_sr - var_sr / s_s**2, var_sr * a_s / s_s**2, 0.0, 0.0 if last else math.sqrt(var_sr)
    if sampler in ("dpmpp_2m", "dpmpp_2m_sde"):
        if last:
            return 0.0, a_r, 0.0, 0.0
        l_s, l_r = math.log(a_s / s_s), math.log(a_r / s_r)
        h = l_r - l_s
        if sampler == "dpmpp_2m":
            kx, w, c = s_r / s_s, -a_r * math.expm1(-h), 0.0
        else:
            kx, w, c = s_r / s_s * math.exp(-h), -a_r * math.expm1(-2 * h), s_r * math.sqrt(-math.expm1(-2 * h))
        if l_p is None:
            return kx, w, 0.0, c
        half_over_r0 = 0.5 * h / (l_s - l_p)  # D_corr = D + (D - D_prev) / (2 r0)
        return kx, w * (1 + half_over_r0), -w * half_over_r0, c
    raise ValueError(sampler)


def sampler_law(schedule: NoiseSchedule, t0: float, steps: int, spacing: str, sampler: str, guide: float,
                mu: float, s: float, repeats: int = 1, eta: float = 0.0) -> tuple[float, float]:
    """Exact mean and variance of one output pixel of the engine's SDEdit (constant guide)."""
    n0 = start_level(t0, schedule.num_levels)
    levels = plan_levels(schedule, n0, steps or n0, spacing)
    targets = np.append(levels[1:], 0)
    g_mean, g_var = float(guide), 0.0
    for _ in range(repeats):
        a0, s0 = float(schedule.alphas[n0]), float(schedule.sigmas[n0])
        m = np.array([a0 * g_mean, 0.0])
        cov = np.array([[a0**2 * g_var + s0**2, 0.0], [0.0, 0.0]])
        l_p = None
        for lev, tgt in zip(levels, targets):
            a_s, s_s = float(schedule.alphas[lev]), float(schedule.sigmas[lev])
            a_r, s_r = float(schedule.alphas[tgt]), float(schedule.sigmas[tgt])
            v_s = a_s**2 * s**2 + s_s**2
            p, q = a_s * s**2 / v_s, s_s**2 * mu / v_s
            kx, kd, kp, c = step_coefficients(sampler, eta, a_s, s_s, a_r, s_r, l_p)
            transition = np.array([[kx + kd * p, kp], [p, 0.0]])
            m = transition @ m + np.array([kd * q, q])
            cov = transition @ cov @ transition.T + np.diag([c * c, 0.0])
            l_p = math.log(a_s / s_s)
        g_mean, g_var = float(m[0]), float(cov[0, 0])
    return g_mean, g_var


def exact_law(schedule: NoiseSchedule, t0: float, guide: float, mu: float, s: float, deterministic: bool) -> tuple[float, float]:
    """The exact answer (no discretisation) for one repeat: reverse SDE or probability-flow ODE."""
    n0 = start_level(t0, schedule.num_levels)
    alpha, sigma = float(schedule.alphas[n0]), float(schedule.sigmas[n0])
    v = alpha**2 * s**2 + sigma**2
    if deterministic:
        return mu + alpha * s / math.sqrt(v) * (guide - mu), s**2 * sigma**2 / v
    return mu + alpha**2 * s**2 / v * (guide - mu), (alpha * s**2 / v) ** 2 * sigma**2 + s**2 * sigma**2 / v


def is_deterministic(sampler: str, eta: float = 0.0) -> bool:
    return sampler in DETERMINISTIC and eta == 0.0
