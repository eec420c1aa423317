"""Schedules, the sampler contract (one test base over every sampler), and golden loops."""

from __future__ import annotations

import numpy as np
import pytest

from service.sde import EditParams, GaussianNoise, SDESpec, build_schedule, get_sampler, run_sdedit
from service.sde.engine import EditCancelled
from service.sde.samplers import SAMPLERS, coefficients
from service.sde.schedules import alphas_cumprod, linear_betas, start_level, strided_levels

SPECS = [SDESpec("vp_discrete"), SDESpec("vp", beta_min=0.1, beta_max=20.0), SDESpec("ve", sigma_min=0.01, sigma_max=50.0)]


def test_discrete_vp_schedule_matches_ddpm():
    schedule = build_schedule(SDESpec("vp_discrete"))
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    assert schedule.num_levels == 1000
    np.testing.assert_allclose(schedule.alphas[1:] ** 2, abar, rtol=1e-12)
    np.testing.assert_allclose(schedule.alphas**2 + schedule.sigmas**2, 1.0, rtol=1e-12)
    assert schedule.model_times[1] == 0 and schedule.model_times[1000] == 999
    assert (schedule.alphas[0], schedule.sigmas[0]) == (1.0, 0.0)
    np.testing.assert_allclose(alphas_cumprod(linear_betas(1000, 1e-4, 0.02)), abar)


def test_continuous_schedules():
    vp = build_schedule(SPECS[1])
    t = 0.5
    expected_alpha = np.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    assert vp.alphas[500] == pytest.approx(expected_alpha, rel=1e-12)
    np.testing.assert_allclose(vp.alphas**2 + vp.sigmas**2, 1.0, rtol=1e-12)
    ve = build_schedule(SPECS[2])
    assert ve.sigmas[1000] == pytest.approx(50.0) and ve.sigmas[500] == pytest.approx(0.01 * 5000**0.5)
    assert np.all(ve.alphas == 1.0) and ve.sigmas[0] == 0.0
    assert ve.model_times[1000] == 1.0


def test_one_ddpm_step_is_the_reference_update():
    """x <- (x - beta_i / sqrt(1 - abar_i) eps) / sqrt(alpha_i) + sqrt(betatilde_i) z."""
    schedule = build_schedule(SDESpec("vp_discrete"))
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    x, eps, z = (rng.standard_normal((2, 1, 4, 4)).astype(np.float32) for _ in range(3))
    for i in (999, 500, 1):
        out = get_sampler("ddpm").step(x, eps, coefficients(schedule, i + 1, i), z)
        betatilde = betas[i] * (1 - abar[i - 1]) / (1 - abar[i])
        reference = (x - betas[i] / np.sqrt(1 - abar[i]) * eps) / np.sqrt(1 - betas[i]) + np.sqrt(betatilde) * z
        np.testing.assert_allclose(out.prev_sample, reference, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.pred_original_sample, (x - np.sqrt(1 - abar[i]) * eps) / np.sqrt(abar[i]), rtol=1e-5, atol=1e-5)
    last = get_sampler("ddpm").step(x, eps, coefficients(schedule, 1, 0), None)
    np.testing.assert_allclose(last.prev_sample, last.pred_original_sample, rtol=1e-5, atol=1e-5)


def test_start_level_and_strided_levels():
    assert start_level(0.5, 1000) == 500 and start_level(1.0, 1000) == 1000 and start_level(1e-6, 1000) == 1
    assert start_level(0.0005, 1000) == 1 and start_level(0.0015, 1000) == 2
    assert list(strided_levels(5, 5)) == [5, 4, 3, 2, 1]
    assert list(strided_levels(500, 1)) == [500]
    for n0, steps in [(500, 50), (1000, 999), (37, 36), (500, 500), (3, 2)]:
        levels = strided_levels(n0, steps)
        assert len(levels) == steps and len(set(levels)) == steps
        assert levels[0] == n0 and levels[-1] == 1 and np.all(np.diff(levels) < 0)
    with pytest.raises(ValueError):
        strided_levels(10, 11)


# --- the sampler contract: one test base over every sampler and SDE ---------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.sde_type)
@pytest.mark.parametrize("name", SAMPLERS)
class TestSamplerContract:
    def test_shapes_dtypes_and_noise_use(self, name, spec):
        schedule = build_schedule(spec)
        sampler = get_sampler(name, eta=0.5 if name == "ddim" else 0.0)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
        eps = rng.standard_normal(x.shape).astype(np.float32)
        for s, r in [(1000, 999), (600, 400), (1, 0)]:
            noise = rng.standard_normal(x.shape).astype(np.float32) if sampler.needs_noise(r) else None
            out = sampler.step(x, eps, coefficients(schedule, s, r), noise)
            assert out.prev_sample.shape == x.shape and out.prev_sample.dtype == np.float32
            assert out.pred_original_sample.dtype == np.float32
            assert np.isfinite(out.prev_sample).all()
        assert not sampler.needs_noise(0)

    def test_noise_is_the_only_randomness(self, name, spec):
        schedule = build_schedule(spec)
        sampler = get_sampler(name, eta=1.0 if name == "ddim" else 0.0)
        rng = np.random.default_rng(2)
        x, eps, noise = (rng.standard_normal((1, 1, 4, 4)).astype(np.float32) for _ in range(3))
        c = coefficients(schedule, 300, 200)
        a = sampler.step(x, eps, c, noise if sampler.needs_noise(200) else None)
        b = sampler.step(x.copy(), eps.copy(), c, noise.copy() if sampler.needs_noise(200) else None)
        np.testing.assert_array_equal(a.prev_sample, b.prev_sample)

    def test_exact_clean_data_is_a_fixed_point_of_the_last_step(self, name, spec):
        """If x = alpha_1 x0 + sigma_1 eps and the network returns that eps, the last step lands on x0."""
        schedule = build_schedule(spec)
        sampler = get_sampler(name)
        rng = np.random.default_rng(3)
        x0, eps = (rng.standard_normal((1, 1, 4, 4)).astype(np.float32) for _ in range(2))
        c = coefficients(schedule, 1, 0)
        x = (c.alpha_s * x0 + c.sigma_s * eps).astype(np.float32)
        out = sampler.step(x, eps, c, None)
        np.testing.assert_allclose(out.pred_original_sample, x0, atol=1e-5)
        # DDPM and DDIM land on x0 up to float32 rounding (measured <= 1.2e-7). Euler-Maruyama's
        # (2 - alpha_1) x - sigma_1 eps misses it by (1 - alpha_1) (sigma_1 eps - (1 - alpha_1) x0),
        # first order in beta_1: about 5e-7 |eps| for VP, 0 for VE (measured <= 1.7e-6). So the
        # tolerance is that term plus the same 1e-5 of rounding slack, not a flat 1e-3: an EM last
        # step that dropped its drift term, (1 - alpha_1) x0 ~ 5e-5 |x0| off, passed 1e-3.
        first_order = 0.0
        if name == "euler_maruyama":
            first_order = (1 - c.alpha_s) * (c.sigma_s * np.abs(eps) + (1 - c.alpha_s) * np.abs(x0))
        assert np.all(np.abs(out.prev_sample - x0) <= first_order + 1e-5)


# --- golden full loops (deterministic fake network, fixed seed) --------------------------------------

def fake_eps(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return (0.1 * x + 0.001 * t[:, None, None, None]).astype(np.float32)


# (sde, sampler, steps, repeats, masked) -> (sum, mean of squares) of the two outputs, recorded
# from this implementation with the service's noise streams (GaussianNoise); a change here means
# the numbers a seed gives have changed: bump ENGINE_VERSION in the same change.
GOLDEN = {
    ("vp_discrete", "ddpm", 0, 1, False): (-399.17071533203125, 41.581626892089844),
    ("vp_discrete", "ddim", 50, 1, False): (-261.1751708984375, 26.63744354248047),
    ("vp_discrete", "ddpm", 50, 2, True): (-167.69361877441406, 14.945878982543945),
    ("ve", "euler_maruyama", 0, 1, False): (23.440044403076172, 3.48531174659729),
    ("vp", "ddim", 20, 1, True): (23.470184326171875, 5.176474571228027),
}


def golden_run(sde: str, sampler: str, steps: int, repeats: int, masked: bool) -> np.ndarray:
    spec = next(s for s in SPECS if s.sde_type == sde)
    guide = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    mask = None
    if masked:
        mask = np.zeros((8, 8), dtype=np.float32)
        mask[2:6, 2:6] = 1
    rngs = [GaussianNoise(0), GaussianNoise(1)]  # the service's noise streams
    result = run_sdedit(fake_eps, build_schedule(spec), guide, mask, EditParams(t0=0.6, steps=steps, repeats=repeats,
                        sampler=sampler), rngs)
    return result.samples


@pytest.mark.parametrize("key", list(GOLDEN), ids=str)
def test_golden_full_loops_are_stable(key):
    samples = golden_run(*key)
    assert samples.shape == (2, 1, 8, 8)
    np.testing.assert_allclose([samples.sum(), (samples**2).mean()], GOLDEN[key], rtol=1e-5)


def test_a_sample_depends_on_its_own_seed_only():
    spec = SPECS[0]
    guide = np.zeros((1, 8, 8), dtype=np.float32)
    params = EditParams(t0=0.5, steps=10)
    together = run_sdedit(fake_eps, build_schedule(spec), guide, None, params, [np.random.default_rng(s) for s in (5, 6, 7)])
    alone = run_sdedit(fake_eps, build_schedule(spec), guide, None, params, [np.random.default_rng(6)])
    np.testing.assert_array_equal(together.samples[1], alone.samples[0])


def test_should_stop_is_checked_before_every_network_call():
    calls = []

    def eps_fn(x, t):
        calls.append(t[0])
        return fake_eps(x, t)

    with pytest.raises(EditCancelled):
        run_sdedit(eps_fn, build_schedule(SPECS[0]), np.zeros((1, 4, 4), np.float32), None, EditParams(t0=0.5, steps=20),
                   [np.random.default_rng(0)], should_stop=lambda: len(calls) >= 3)
    assert len(calls) == 3


def test_network_calls_and_step_events():
    events = []
    result = run_sdedit(fake_eps, build_schedule(SPECS[0]), np.zeros((1, 4, 4), np.float32), None,
                        EditParams(t0=0.3, steps=7, repeats=3, preview_every=3), [np.random.default_rng(0)], on_step=events.append)
    assert result.network_calls == 21 and len(events) == 21
    assert [e.progress.network_calls for e in events] == list(range(1, 22))
    previews = [(e.progress.repeat, e.progress.step) for e in events if e.pred_original_sample is not None]
    assert previews == [(r, s) for r in (1, 2, 3) for s in (3, 6, 7)]


@pytest.mark.parametrize("bad", [dict(t0=0.0), dict(t0=1.01), dict(t0=0.5, repeats=0), dict(t0=0.01, steps=11)])
def test_engine_rejects_bad_parameters(bad):
    with pytest.raises(ValueError):
        run_sdedit(fake_eps, build_schedule(SPECS[0]), np.zeros((1, 4, 4), np.float32), None, EditParams(**bad),
                   [np.random.default_rng(0)])


def test_per_sample_guides_and_masks_equal_separate_runs():
    schedule = build_schedule(SPECS[0])
    rng = np.random.default_rng(4)
    guides = rng.uniform(-1, 1, (3, 1, 6, 6)).astype(np.float32)
    masks = (rng.uniform(size=(3, 6, 6)) > 0.5).astype(np.float32)
    params = EditParams(t0=0.4, steps=8, repeats=2)
    batched = run_sdedit(fake_eps, schedule, guides, masks, params, [np.random.default_rng(s) for s in range(3)])
    for i in range(3):
        alone = run_sdedit(fake_eps, schedule, guides[i], masks[i], params, [np.random.default_rng(i)])
        np.testing.assert_array_equal(batched.samples[i], alone.samples[0])
        np.testing.assert_array_equal(batched.samples[i][0][masks[i] == 0], guides[i][0][masks[i] == 0])
    with pytest.raises(ValueError, match="guide must be"):
        run_sdedit(fake_eps, schedule, guides[:2], None, params, [np.random.default_rng(s) for s in range(3)])


# --- the noise streams (service/sde/noise.py) ---------------------------------------------------

NOISE_DRAWS = 1 << 20


def test_gaussian_noise_is_standard_normal():
    """Box-Muller on float32 uniforms. Each bound is 5 standard errors of its statistic at
    n = 2^20 (a two-sided 5-sigma bound fails by chance with p = 6e-7; four of them, so the
    family's false-alarm rate is < 3e-6 for a fixed seed), and the Kolmogorov-Smirnov distance
    has its alpha = 1e-6 critical value sqrt(-ln(alpha / 2) / (2 n)). The tails are cut at
    sqrt(-2 ln 2^-24) = 5.77 by construction."""
    from math import erf, log, sqrt

    z = GaussianNoise(0).standard_normal(NOISE_DRAWS).astype(np.float64)
    n = z.size
    assert abs(z.mean()) < 5 / sqrt(n)
    assert abs(z.var() - 1) < 5 * sqrt(2 / n)
    assert abs((z**3).mean()) < 5 * sqrt(15 / n)  # Var(z^3) = 15
    assert abs((z**4).mean() - 3) < 5 * sqrt(96 / n)  # Var(z^4) = 105 - 9
    assert np.abs(z).max() <= sqrt(-2 * log(2.0**-24)) + 1e-5
    ordered = np.sort(z)
    cdf = 0.5 * (1 + np.vectorize(erf)(ordered / sqrt(2)))
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < sqrt(-log(1e-6 / 2) / (2 * n))
    # the cosine and sine halves of one draw are independent: their correlation is ~ N(0, 1/m)
    half = n // 2
    assert abs(np.corrcoef(z[:half], z[half:])[0, 1]) < 5 / sqrt(half)


def test_gaussian_noise_is_a_function_of_seed_and_position():
    shape = (3, 5, 7)  # odd: the last value is a cosine with no sine
    one = GaussianNoise(42).standard_normal(shape)
    out = np.empty(shape, dtype=np.float32)
    GaussianNoise(42).standard_normal(out=out, dtype=np.float32)
    np.testing.assert_array_equal(one, out)
    assert one.dtype == np.float32 and one.shape == shape and np.isfinite(one).all()
    stream = GaussianNoise(42)
    first, second = stream.standard_normal(shape), stream.standard_normal(shape)
    np.testing.assert_array_equal(first, one)
    assert not np.array_equal(first, second)
    assert not np.array_equal(GaussianNoise(43).standard_normal(shape), one)
    with pytest.raises(ValueError, match="float32"):
        GaussianNoise(0).standard_normal(4, dtype=np.float64)
