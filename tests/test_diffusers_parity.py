"""Parity with the field's reference implementations (dev only: diffusers and torch).

diffusers' DDPMScheduler, DDIMScheduler and DPMSolverMultistepScheduler (dpmsolver++ and
sde-dpmsolver++, order 2) run the same deterministic eps function from the same start, on the
same levels, with the same noise, as our engine (service/sde/engine.py through
run_sdedit, whose generators are replaced by ones that hand out that noise). Outputs must
match within 1e-5. Level k of our vp_discrete schedule is diffusers' timestep k - 1.

The service never imports torch; this test skips (with the reason) only where diffusers or
torch is not installed. `make test` installs both ('.[dev,train]'), so in CI it runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.sde import EditParams, SDESpec, build_schedule, run_sdedit
from service.sde.engine import plan_levels

torch = pytest.importorskip("torch", reason="the parity test needs torch (the train extra)")
diffusers = pytest.importorskip("diffusers", reason="the parity test needs diffusers (the dev extra)")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy 2 copy= warning

SCHEDULE = build_schedule(SDESpec("vp_discrete"))
SHAPE = (2, 1, 6, 6)  # two samples, so batches are exercised too
TOLERANCE = 1e-5
CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def eps_fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A deterministic, nonlinear stand-in for a network, eps(x, t) with t the DDPM index: the exact
    eps of N(0.2, 0.4^2) data plus a nonlinear term, so the outputs stay image-like (|x| ~ 1)."""
    level = np.asarray(t, dtype=np.int64).reshape(-1, 1, 1, 1) + 1
    alpha, sigma = SCHEDULE.alphas[level], SCHEDULE.sigmas[level]
    exact = sigma * (x - alpha * 0.2) / (alpha**2 * 0.16 + sigma**2)
    return (exact + 0.05 * np.sin(3.0 * x) * sigma).astype(np.float32)


class FixedNoise:
    """Stands in for np.random.Generator in run_sdedit: hands out given draws, in order."""

    def __init__(self, draws: list[np.ndarray]):
        self.draws = list(draws)

    def standard_normal(self, shape, dtype=np.float32):
        draw = self.draws.pop(0)
        assert draw.shape == tuple(shape)
        return draw.astype(dtype)


def start_sample(guide: np.ndarray, n0: int, z0: np.ndarray) -> np.ndarray:
    """The engine's start: alpha_n0 g + sigma_n0 z, in float32, as run_sdedit computes it."""
    return (SCHEDULE.alphas[n0] * guide + SCHEDULE.sigmas[n0] * z0).astype(np.float32)


def ours(params: EditParams, guide: np.ndarray, z0: np.ndarray, step_noise: list[np.ndarray]) -> np.ndarray:
    """run_sdedit with per-sample generators that return z0 then the step noises."""
    rngs = [FixedNoise([z0[i]] + [n[i] for n in step_noise]) for i in range(SHAPE[0])]
    result = run_sdedit(eps_fn, SCHEDULE, guide, None, params, rngs)
    assert all(not rng.draws for rng in rngs), "the engine drew less noise than diffusers"
    return result.samples


def exact_table(scheduler):
    """Hands diffusers our float64 alphas_cumprod. Its own is accumulated in float32, which near
    t = 0 is off by up to ~1e-3 relative in 1 - abar (test_alphas_match shows abar itself agrees
    to 1e-5): with the same table the comparison is of the samplers, not of float32 cumprod."""
    scheduler.alphas_cumprod = torch.from_numpy(SCHEDULE.alphas[1:] ** 2)
    return scheduler


def run_diffusers(scheduler, timesteps: list[int], x: np.ndarray, noises: list[np.ndarray | None], **step_kwargs) -> np.ndarray:
    sample = torch.from_numpy(x.copy())
    for t, noise in zip(timesteps, noises):
        eps = torch.from_numpy(eps_fn(sample.numpy(), np.full(SHAPE[0], t)))
        kwargs = dict(step_kwargs)
        if noise is not None:
            kwargs["variance_noise"] = torch.from_numpy(noise)
        sample = scheduler.step(eps, t, sample, **kwargs).prev_sample
    return sample.numpy()


@pytest.fixture
def guide() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, SHAPE[1:]).astype(np.float32)


def test_alphas_match():
    scheduler = diffusers.DDPMScheduler(**CONFIG)
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), SCHEDULE.alphas[1:] ** 2, rtol=1e-5)


@pytest.mark.parametrize(("t0", "steps", "spacing"), [(0.5, 25, "time_uniform"), (0.3, 12, "logsnr_uniform"), (0.8, 300, "karras")])
def test_ddpm_matches_diffusers_ddpm_scheduler(guide, t0, steps, spacing):
    params = EditParams(t0=t0, steps=steps, sampler="ddpm", spacing=spacing)
    levels = plan_levels(params, SCHEDULE)
    timesteps = [int(k) - 1 for k in levels]
    scheduler = exact_table(diffusers.DDPMScheduler(**CONFIG, clip_sample=False, variance_type="fixed_small"))
    scheduler.set_timesteps(timesteps=timesteps)
    generator = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(2)
    z0 = rng.standard_normal(SHAPE).astype(np.float32)
    x = start_sample(guide, int(levels[0]), z0)
    expected = run_diffusers(scheduler, timesteps, x, [None] * len(timesteps), generator=generator)
    # diffusers DDPM draws torch.randn(shape) from its generator at every step with t > 0: the same draws for ours
    replay = torch.Generator().manual_seed(1)
    step_noise = [torch.randn(SHAPE, generator=replay).numpy() for t in timesteps if t > 0]
    np.testing.assert_allclose(ours(params, guide, z0, step_noise), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers_ddim_scheduler(guide, eta):
    # DDIM steps by num_train_timesteps // num_inference_steps: t0 = 0.4, 20 steps are levels 400, 379, ..., 1 (stride 21)
    params = EditParams(t0=0.4, steps=20, sampler="ddim", eta=eta)
    levels = plan_levels(params, SCHEDULE)
    assert set(np.diff(levels)) == {-21}
    timesteps = [int(k) - 1 for k in levels]
    scheduler = exact_table(diffusers.DDIMScheduler(**CONFIG, clip_sample=False, set_alpha_to_one=True))
    scheduler.set_timesteps(1000 // 21)  # 47: 1000 // 47 = 21
    scheduler.timesteps = torch.tensor(timesteps)
    rng = np.random.default_rng(3)
    z0 = rng.standard_normal(SHAPE).astype(np.float32)
    step_noise = [rng.standard_normal(SHAPE).astype(np.float32) for _ in timesteps[:-1]] if eta > 0 else []
    noises = [*step_noise, np.zeros(SHAPE, np.float32)] if eta > 0 else [None] * len(timesteps)
    expected = run_diffusers(scheduler, timesteps, start_sample(guide, int(levels[0]), z0), noises, eta=eta)
    np.testing.assert_allclose(ours(params, guide, z0, step_noise), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_sde"])
@pytest.mark.parametrize(("t0", "steps", "spacing"), [(0.5, 20, "logsnr_uniform"), (0.3, 10, "time_uniform"),
                                                      (0.8, 5, "karras"), (0.6, 2, "logsnr_uniform"), (1.0, 50, "logsnr_uniform")])
def test_dpm_solver_matches_diffusers_multistep_scheduler(guide, sampler, t0, steps, spacing):
    """Order 2 with diffusers' defaults (lower_order_final, final sigma zero): first order on the
    first step (an intermediate start has no history) and on the last, second order between."""
    params = EditParams(t0=t0, steps=steps, sampler=sampler, spacing=spacing)
    levels = plan_levels(params, SCHEDULE)
    timesteps = [int(k) - 1 for k in levels]
    stochastic = sampler == "dpmpp_2m_sde"
    scheduler = exact_table(diffusers.DPMSolverMultistepScheduler(
        **CONFIG, solver_order=2, algorithm_type="sde-dpmsolver++" if stochastic else "dpmsolver++",
        solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True))
    scheduler.set_timesteps(timesteps=timesteps)
    rng = np.random.default_rng(4)
    z0 = rng.standard_normal(SHAPE).astype(np.float32)
    step_noise = [rng.standard_normal(SHAPE).astype(np.float32) for _ in timesteps[:-1]] if stochastic else []
    noises = [*step_noise, np.zeros(SHAPE, np.float32)] if stochastic else [None] * len(timesteps)
    expected = run_diffusers(scheduler, timesteps, start_sample(guide, int(levels[0]), z0), noises)
    np.testing.assert_allclose(ours(params, guide, z0, step_noise), expected, atol=TOLERANCE, rtol=0)
